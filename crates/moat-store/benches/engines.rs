//! The measurement behind docs/adr/0001-embedded-store.md: the same keys and values written
//! to redb, fjall and SQLite (rusqlite, bundled), one transaction and one full fsync per batch,
//! then a full scan of 100k messages.
//!
//! ```text
//! cargo bench -p moat-store --features bench-engines --bench engines [-- ENGINE PHASE]
//! ```
//! ENGINE is `redb`, `fjall`, `sqlite` or `all`; PHASE is `b1`, `b100`, `load` or `all`. The
//! data goes to `$MOAT_BENCH_DIR` (default: a temporary directory), which must be on the disk
//! under test. Run one phase under `strace -f -c -e trace=fsync,fdatasync` to count fsyncs.

use std::path::Path;
use std::time::{Duration, Instant};

const PAYLOAD: [u8; 64] = [0x5a; 64];

fn key(client: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(client.len() + 11);
    k.push(b'm');
    k.extend_from_slice(&(client.len() as u16).to_be_bytes());
    k.extend_from_slice(client.as_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn value() -> Vec<u8> {
    // Roughly what an encoded 64-byte message is: header, topic, payload, state.
    let mut v = vec![1, 1, 0, 0, 12];
    v.extend_from_slice(b"sensors/t/42");
    v.push(64);
    v.extend_from_slice(&PAYLOAD);
    v.extend_from_slice(&[0, 0, 0]);
    v
}

trait Engine {
    fn write(&mut self, kvs: &[(Vec<u8>, Vec<u8>)]);
    fn scan(&self) -> usize;
}

struct Redb(redb::Database);
const TABLE: redb::TableDefinition<'_, &[u8], &[u8]> = redb::TableDefinition::new("kv");

impl Engine for Redb {
    fn write(&mut self, kvs: &[(Vec<u8>, Vec<u8>)]) {
        let tx = self.0.begin_write().unwrap();
        {
            let mut t = tx.open_table(TABLE).unwrap();
            for (k, v) in kvs {
                t.insert(k.as_slice(), v.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    fn scan(&self) -> usize {
        use redb::ReadableTable;
        let tx = self.0.begin_read().unwrap();
        let t = tx.open_table(TABLE).unwrap();
        let mut n = 0;
        for r in t.iter().unwrap() {
            let (k, v) = r.unwrap();
            n += k.value().len() + v.value().len();
        }
        n
    }
}

struct Fjall(fjall::Keyspace, fjall::PartitionHandle);

impl Engine for Fjall {
    fn write(&mut self, kvs: &[(Vec<u8>, Vec<u8>)]) {
        let mut b = self.0.batch().durability(Some(fjall::PersistMode::SyncAll));
        for (k, v) in kvs {
            b.insert(&self.1, k.as_slice(), v.as_slice());
        }
        b.commit().unwrap();
    }
    fn scan(&self) -> usize {
        let mut n = 0;
        for r in self.1.iter() {
            let (k, v) = r.unwrap();
            n += k.len() + v.len();
        }
        n
    }
}

struct Sqlite(rusqlite::Connection);

impl Engine for Sqlite {
    fn write(&mut self, kvs: &[(Vec<u8>, Vec<u8>)]) {
        let tx = self.0.transaction().unwrap();
        {
            let mut st = tx
                .prepare_cached("INSERT OR REPLACE INTO kv (k, v) VALUES (?1, ?2)")
                .unwrap();
            for (k, v) in kvs {
                st.execute((k, v)).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    fn scan(&self) -> usize {
        let mut st = self
            .0
            .prepare_cached("SELECT k, v FROM kv ORDER BY k")
            .unwrap();
        let mut rows = st.query(()).unwrap();
        let mut n = 0;
        while let Some(r) = rows.next().unwrap() {
            let k: Vec<u8> = r.get(0).unwrap();
            let v: Vec<u8> = r.get(1).unwrap();
            n += k.len() + v.len();
        }
        n
    }
}

fn open(engine: &str, dir: &Path) -> Box<dyn Engine> {
    match engine {
        "redb" => Box::new(Redb(
            redb::Database::create(dir.join("store.redb")).unwrap(),
        )),
        "fjall" => {
            let ks = fjall::Config::new(dir.join("fjall")).open().unwrap();
            let p = ks
                .open_partition("kv", fjall::PartitionCreateOptions::default())
                .unwrap();
            Box::new(Fjall(ks, p))
        }
        "sqlite" => {
            let c = rusqlite::Connection::open(dir.join("store.sqlite")).unwrap();
            c.pragma_update(None, "journal_mode", "WAL").unwrap();
            // FULL: the WAL is fsynced at every commit (NORMAL would not be durable).
            c.pragma_update(None, "synchronous", "FULL").unwrap();
            c.execute(
                "CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID",
                (),
            )
            .unwrap();
            Box::new(Sqlite(c))
        }
        other => panic!("unknown engine {other}"),
    }
}

fn batches(e: &mut dyn Engine, size: usize, commits: usize, seq: &mut u64) -> Duration {
    let v = value();
    let start = Instant::now();
    for _ in 0..commits {
        let kvs: Vec<_> = (0..size)
            .map(|_| {
                *seq += 1;
                (key("client-0001", *seq), v.clone())
            })
            .collect();
        e.write(&kvs);
    }
    start.elapsed()
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let engines = match args.first().map(String::as_str) {
        None | Some("all") => vec!["redb", "fjall", "sqlite"],
        Some(e) => vec![e],
    };
    let phase = args.get(1).map_or("all", String::as_str);
    let base = std::env::var_os("MOAT_BENCH_DIR").map(std::path::PathBuf::from);
    for engine in engines {
        let tmp = match &base {
            Some(b) => tempfile::tempdir_in(b).unwrap(),
            None => tempfile::tempdir().unwrap(),
        };
        let mut e = open(engine, tmp.path());
        let mut seq = 0;
        if phase == "all" || phase == "b1" {
            let n = 500;
            let t = batches(e.as_mut(), 1, n, &mut seq);
            println!(
                "{engine:6} batch=1   {n:5} commits: {:8.0} ops/s, {:7.0} commits/s, {:6.2} ms/commit",
                n as f64 / t.as_secs_f64(),
                n as f64 / t.as_secs_f64(),
                t.as_secs_f64() * 1e3 / n as f64
            );
        }
        if phase == "all" || phase == "b100" {
            let n = 200;
            let t = batches(e.as_mut(), 100, n, &mut seq);
            println!(
                "{engine:6} batch=100 {n:5} commits: {:8.0} ops/s, {:7.0} commits/s, {:6.2} ms/commit",
                (n * 100) as f64 / t.as_secs_f64(),
                n as f64 / t.as_secs_f64(),
                t.as_secs_f64() * 1e3 / n as f64
            );
        }
        if phase == "all" || phase == "load" {
            drop(e);
            let tmp2 = match &base {
                Some(b) => tempfile::tempdir_in(b).unwrap(),
                None => tempfile::tempdir().unwrap(),
            };
            let mut e = open(engine, tmp2.path());
            let mut seq = 0;
            batches(e.as_mut(), 10_000, 10, &mut seq);
            drop(e);
            // Reopen: the load a restart does.
            let start = Instant::now();
            let e = open(engine, tmp2.path());
            let opened = start.elapsed();
            let bytes = e.scan();
            let t = start.elapsed();
            println!(
                "{engine:6} load 100k: open {:6.1} ms, open+scan {:6.1} ms ({bytes} bytes), {} bytes on disk",
                opened.as_secs_f64() * 1e3,
                t.as_secs_f64() * 1e3,
                du(tmp2.path())
            );
        }
    }
}

fn du(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => du(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

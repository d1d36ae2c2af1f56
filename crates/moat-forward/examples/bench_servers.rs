//! Starts a private PostgreSQL and a private nats-server (JetStream) on loopback ports of their
//! own, prints `PG_URL=...`, `PG_PASSWORD=...`, `NATS_URL=...` and `READY`, and stops both when
//! its standard input closes: the backends of `scripts/bench-forward.sh`.
//!
//! Commands on standard input, one a line, each answered with `OK <command>` (or
//! `ERR <command>: <why>`) once done:
//! - `kill pg`, `kill nats`: SIGKILL the server, as a crash would;
//! - `start pg`, `start nats`: start it again on the same port and storage (after a kill).

use std::io::BufRead;

use moat_forward::testing::{NatsServer, PgServer, PG_PASSWORD};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut pg = PgServer::start().await?;
    let mut nats = NatsServer::start().await?;
    println!("PG_URL={}", pg.url());
    println!("PG_PASSWORD={PG_PASSWORD}");
    println!("NATS_URL={}", nats.url());
    println!("READY");
    // Lines of stdin until it closes (the script exits or closes it): then Drop stops both
    // servers by pid.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = rx.recv().await {
        let command = line.trim();
        let result = match command {
            "" => continue,
            "kill pg" => {
                pg.kill();
                Ok(())
            }
            "kill nats" => {
                nats.kill();
                Ok(())
            }
            "start pg" => pg.restart().await,
            "start nats" => nats.restart().await,
            _ => Err(std::io::Error::other("unknown command")),
        };
        match result {
            Ok(()) => println!("OK {command}"),
            Err(e) => println!("ERR {command}: {e}"),
        }
    }
    drop((pg, nats));
    Ok(())
}

//! Starts a private PostgreSQL and a private nats-server (JetStream) on loopback ports of their
//! own, prints `PG_URL=...`, `PG_PASSWORD=...`, `NATS_URL=...` and `READY`, and stops both when
//! its standard input closes: the backends of `scripts/bench-forward.sh`.

use std::io::Read;

use moat_forward::testing::{NatsServer, PgServer, PG_PASSWORD};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let pg = PgServer::start().await?;
    let nats = NatsServer::start().await?;
    println!("PG_URL={}", pg.url());
    println!("PG_PASSWORD={PG_PASSWORD}");
    println!("NATS_URL={}", nats.url());
    println!("READY");
    // Until the script closes our stdin (or exits): then Drop stops both servers by pid.
    let mut sink = Vec::new();
    tokio::task::spawn_blocking(move || std::io::stdin().read_to_end(&mut sink))
        .await
        .map_err(std::io::Error::other)??;
    drop((pg, nats));
    Ok(())
}

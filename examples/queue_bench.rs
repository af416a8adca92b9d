//! Queue benchmark (`benches/queue.sh`): how many no-op jobs per second the worker runs, with
//! one or more worker processes, against the same PostgreSQL.
//!
//!   queue_bench DATABASE_URL JOBS PROCESSES     enqueue JOBS, start PROCESSES workers, time the drain
//!   queue_bench DATABASE_URL work               one worker process (started by the above)
//!
//! Prints `jobs=… processes=… seconds=… jobs_per_sec=…`.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use kommo_pay_core::config::{JobPolicies, WorkerConfig};
use kommo_pay_worker::{Handlers, Worker};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

const KIND: &str = "bench.noop";

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).expect("usage: queue_bench DATABASE_URL JOBS PROCESSES | DATABASE_URL work");
    let pool = PgPoolOptions::new().max_connections(8).connect(url).await.expect("database");
    if args.get(2).map(String::as_str) == Some("work") {
        let config = WorkerConfig {
            concurrency: 512,
            claim_batch: 512,
            max_per_account: 512,
            poll_interval: Duration::from_millis(50),
            heartbeat_interval: Duration::from_secs(5),
            job_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(5),
        };
        let handlers = Handlers::new().on(KIND, |_job| async { Ok(()) });
        Worker::new(pool, handlers, config, JobPolicies::default()).run(std::future::pending()).await.unwrap();
        return;
    }
    let jobs: i64 = args[2].parse().expect("JOBS");
    let processes: usize = args[3].parse().expect("PROCESSES");

    sqlx::query("DELETE FROM jobs WHERE kind = $1").bind(KIND).execute(&pool).await.unwrap();
    sqlx::query("INSERT INTO jobs (kind, account, max_attempts) SELECT $1, 'bench', 5 FROM generate_series(1, $2)")
        .bind(KIND)
        .bind(jobs)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("CHECKPOINT").execute(&pool).await.unwrap();

    let started = Instant::now();
    let mut workers: Vec<Child> =
        (0..processes).map(|_| Command::new(std::env::current_exe().unwrap()).args([url.as_str(), "work"]).spawn().expect("worker process")).collect();
    while remaining(&pool).await > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    for worker in &mut workers {
        worker.kill().ok();
        worker.wait().ok();
    }
    println!("jobs={jobs} processes={processes} seconds={seconds:.2} jobs_per_sec={:.0}", jobs as f64 / seconds);
}

async fn remaining(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = $1 AND state <> 'completed'").bind(KIND).fetch_one(pool).await.unwrap()
}

//! Load generator for the ingest benchmark (`benches/ingest.sh`): sends correctly signed Stripe
//! webhooks, each with a new event id, and prints throughput and latency.
//!
//!   stripe_load URL SECRET closed CONCURRENCY SECONDS   as fast as CONCURRENCY clients can go
//!   stripe_load URL SECRET rate   PER_SECOND  SECONDS   a fixed arrival rate (open loop)
//!   stripe_load --print-event                           one event body, for pgbench's script
//!
//! In `rate` mode latency counts from each request's scheduled time, so a stalled server is not
//! hidden by the generator waiting for it (no coordinated omission). Output: one line,
//! `events_per_sec=… p50_ms=… p99_ms=… max_ms=… errors=…`. Every request goes to a loopback URL
//! of the caller's choosing and the run stops by itself.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use kommo_pay_core::stripe::webhook::signature_header;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// One thread: the generator shares the machine's cores with the server and PostgreSQL, so it
// takes as little of them as it can (as pgbench does), and a plain keep-alive HTTP/1.1 client
// costs a fraction of a full-featured one per request.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    // The benchmark's pgbench script stores a payload of the same size as the events sent.
    if args.get(1).map(String::as_str) == Some("--print-event") {
        println!("{}", event("evt_pgbench"));
        return;
    }
    let [_, url, secret, mode, amount, seconds] = args.as_slice() else {
        eprintln!("usage: stripe_load URL SECRET closed|rate CONCURRENCY|PER_SECOND SECONDS");
        std::process::exit(2);
    };
    let amount: u64 = amount.parse().expect("a number");
    let duration = Duration::from_secs(seconds.parse().expect("seconds"));
    let (address, path) = url.strip_prefix("http://").and_then(|rest| rest.split_once('/')).expect("a URL http://HOST:PORT/PATH");
    let load = Rc::new(Load {
        address: address.to_owned(),
        path: format!("/{path}"),
        secret: secret.clone(),
        run: uuid::Uuid::new_v4().simple().to_string(),
        template: event("EVENT_ID"),
        idle: RefCell::new(Vec::new()),
        latencies: RefCell::new(Vec::new()),
        errors: Default::default(),
    });

    let started = Instant::now();
    let local = tokio::task::LocalSet::new();
    match mode.as_str() {
        "closed" => local.run_until(closed_loop(&load, amount as usize, duration)).await,
        "rate" => local.run_until(open_loop(&load, amount, duration)).await,
        other => panic!("unknown mode {other}"),
    }
    let elapsed = started.elapsed().as_secs_f64();

    let mut latencies = load.latencies.borrow().clone();
    latencies.sort_unstable();
    let pct = |p: f64| latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1))).copied().unwrap_or(0);
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "events_per_sec={:.0} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} requests={} errors={}",
        latencies.len() as f64 / elapsed,
        ms(pct(0.50)),
        ms(pct(0.99)),
        ms(latencies.last().copied().unwrap_or(0)),
        latencies.len(),
        load.errors.get(),
    );
}

struct Load {
    /// `host:port` and path of the webhook URL.
    address: String,
    path: String,
    secret: String,
    run: String,
    /// The event body with `EVENT_ID` where each request's id goes.
    template: String,
    /// Open connections not in use (HTTP/1.1 keep-alive).
    idle: RefCell<Vec<Connection>>,
    /// Latency of each successful request, in microseconds.
    latencies: RefCell<Vec<u64>>,
    errors: std::cell::Cell<u64>,
}

impl Load {
    /// Sends event number `n`; records its latency counted from `since`.
    async fn send(&self, n: u64, since: Instant) {
        let body = self.template.replace("EVENT_ID", &format!("evt_bench_{}_{n}", self.run));
        let signature = signature_header(&self.secret, chrono::Utc::now().timestamp(), body.as_bytes());
        let request = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nStripe-Signature: {signature}\r\nContent-Length: {}\r\n\r\n{body}",
            self.path,
            self.address,
            body.len()
        );
        let pooled = self.idle.borrow_mut().pop();
        let connection = match pooled {
            Some(connection) => Ok(connection),
            None => Connection::open(&self.address).await,
        };
        match connection {
            Ok(mut connection) => match connection.exchange(request.as_bytes()).await {
                Ok(200) => {
                    self.latencies.borrow_mut().push(since.elapsed().as_micros() as u64);
                    self.idle.borrow_mut().push(connection);
                }
                // Any other answer counts as an error; the connection stays usable.
                Ok(_) => {
                    self.errors.set(self.errors.get() + 1);
                    self.idle.borrow_mut().push(connection);
                }
                Err(_) => self.errors.set(self.errors.get() + 1),
            },
            Err(_) => self.errors.set(self.errors.get() + 1),
        }
    }
}

/// One keep-alive HTTP/1.1 connection: a request out, its whole answer in.
struct Connection {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Connection {
    async fn open(address: &str) -> std::io::Result<Connection> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(Connection { stream, buffer: Vec::with_capacity(4096) })
    }

    /// Writes `request` and reads the answer to its end (by `Content-Length`); returns its status.
    async fn exchange(&mut self, request: &[u8]) -> std::io::Result<u16> {
        self.stream.write_all(request).await?;
        self.buffer.clear();
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head) = response.parse(&self.buffer).map_err(std::io::Error::other)? {
                let length: usize = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                    .ok_or_else(|| std::io::Error::other("an answer without Content-Length"))?;
                let status = response.code.unwrap_or(0);
                while self.buffer.len() < head + length {
                    self.read_more().await?;
                }
                return Ok(status);
            }
            self.read_more().await?;
        }
    }

    async fn read_more(&mut self) -> std::io::Result<()> {
        if self.stream.read_buf(&mut self.buffer).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
}

async fn closed_loop(load: &Rc<Load>, concurrency: usize, duration: Duration) {
    let deadline = Instant::now() + duration;
    let counter = Rc::new(std::cell::Cell::new(0u64));
    let clients: Vec<_> = (0..concurrency)
        .map(|_| {
            let (load, counter) = (load.clone(), counter.clone());
            tokio::task::spawn_local(async move {
                while Instant::now() < deadline {
                    let n = counter.get();
                    counter.set(n + 1);
                    load.send(n, Instant::now()).await;
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
}

async fn open_loop(load: &Rc<Load>, per_second: u64, duration: Duration) {
    let total = per_second * duration.as_secs();
    let interval = Duration::from_secs_f64(1.0 / per_second as f64);
    let start = Instant::now();
    let mut requests = Vec::with_capacity(total as usize);
    for n in 0..total {
        let scheduled = start + interval * n as u32;
        tokio::time::sleep_until(scheduled.into()).await;
        let load = load.clone();
        requests.push(tokio::task::spawn_local(async move { load.send(n, scheduled).await }));
    }
    for request in requests {
        request.await.unwrap();
    }
}

/// A `checkout.session.completed` event of realistic size (about 1.5 KB).
fn event(id: &str) -> String {
    serde_json::json!({
        "id": id, "object": "event", "api_version": "2025-07-30.basil", "created": 1764160000,
        "livemode": false, "pending_webhooks": 1, "request": { "id": null, "idempotency_key": null },
        "type": "checkout.session.completed",
        "data": { "object": {
            "id": "cs_test_a1B2c3D4e5F6g7H8i9J0", "object": "checkout.session", "amount_subtotal": 200000,
            "amount_total": 200000, "currency": "usd", "customer": null, "customer_creation": "if_required",
            "customer_details": { "email": "client@example.com", "name": "Jane Client", "phone": null,
                "address": { "city": "Berlin", "country": "DE", "line1": "Street 1", "line2": null, "postal_code": "10115", "state": null },
                "tax_exempt": "none", "tax_ids": [] },
            "livemode": false, "mode": "payment", "payment_intent": "pi_3QxYz0AbCdEfGh1I0JkLmNoP",
            "payment_link": "plink_1QxYz0AbCdEfGh1IjKlMnOpQ", "payment_method_types": ["card"],
            "payment_status": "paid", "status": "complete", "success_url": null, "url": null,
            "metadata": { "kommo_account_id": "32427762", "kommo_lead_id": "15318175", "kommo_contact_id": "9012345" },
            "created": 1764159900, "expires_at": 1764246300
        }}
    })
    .to_string()
}

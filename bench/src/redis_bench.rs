//! Redis for context, when `redis-server` is on PATH: GET at the same payloads, concurrency and
//! connection counts as the Get hits (multiplexed connections, the way a Rust service shares
//! one), and memory per 1 KiB item. Persistence is off, so it has no disk figure.

use std::path::Path;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use crate::hits::Setting;
use crate::load::Caller;
use crate::procs::{self, Proc};

/// A running redis-server and connections to it.
pub struct RedisTarget {
    proc: Proc,
    addr: std::net::SocketAddr,
    conns: Vec<MultiplexedConnection>,
}

/// Redis's memory before and after storing the items.
pub struct RedisMemory {
    /// Items stored.
    pub items: u64,
    /// VmRSS before and after, bytes.
    pub rss: (u64, u64),
    /// INFO memory's used_memory before and after, bytes.
    pub used_memory: (u64, u64),
}

impl RedisTarget {
    /// Starts `bin` on a free loopback port, without persistence, and opens `conns`
    /// connections to it.
    pub async fn start(bin: &Path, dir: &Path, conns: usize) -> Result<RedisTarget, String> {
        let addr = procs::free_addr();
        let args: Vec<String> = [
            "--port",
            &addr.port().to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            &dir.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut proc = Proc::spawn("redis-server", bin, &args, dir.join("redis.log"))?;
        procs::wait_listening(&mut proc, addr, Duration::from_secs(10)).await?;
        let client = redis::Client::open(format!("redis://{addr}/")).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for _ in 0..conns {
            out.push(
                client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| format!("cannot connect to redis at {addr}: {e}"))?,
            );
        }
        Ok(RedisTarget {
            proc,
            addr,
            conns: out,
        })
    }

    /// A daemon's store URL for it (`redis://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// One of the connections.
    pub fn connection(&self) -> MultiplexedConnection {
        self.conns[0].clone()
    }

    /// SETs the items the GETs read, under the same args as the daemon's.
    pub async fn prepare(&self, settings: &[Setting]) -> Result<(), String> {
        let mut conn = self.conns[0].clone();
        for setting in settings {
            for args in setting.item_args() {
                redis::cmd("SET")
                    .arg(key(&args))
                    .arg(vec![b'x'; setting.payload])
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(|e| format!("redis SET: {e}"))?;
            }
        }
        Ok(())
    }

    /// A caller of the setting's items (GET of one, MGET of a batch) over connection `conn`.
    pub fn getter(&self, conn: usize, setting: &Setting) -> RedisGet {
        RedisGet {
            conn: self.conns[conn].clone(),
            keys: setting.item_args().iter().map(|a| key(a)).collect(),
            expect_len: setting.payload,
        }
    }

    /// Stores `n` items of `size` bytes (pipelined) and reports memory before and after.
    pub async fn memory(&self, n: u64, size: usize) -> Result<RedisMemory, String> {
        let mut conn = self.conns[0].clone();
        let rss0 = self.proc.rss_bytes().unwrap_or(0);
        let used0 = used_memory(&mut conn).await?;
        let mut i = 0;
        while i < n {
            let mut pipe = redis::pipe();
            for j in i..(i + 1000).min(n) {
                pipe.cmd("SET")
                    .arg(format!("mem:[{j}]"))
                    .arg(item_data(j, size))
                    .ignore();
            }
            pipe.query_async::<()>(&mut conn)
                .await
                .map_err(|e| format!("redis SET: {e}"))?;
            i += 1000;
        }
        let rss1 = self.proc.rss_bytes().unwrap_or(0);
        let used1 = used_memory(&mut conn).await?;
        Ok(RedisMemory {
            items: n,
            rss: (rss0, rss1),
            used_memory: (used0, used1),
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Stops redis-server.
    pub async fn stop(self) {
        drop(self.conns);
        let _ = self.proc.stop(Duration::from_secs(5)).await;
    }
}

/// The data of memory item `i`: `size` bytes that differ from item to item.
pub fn item_data(i: u64, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size);
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(size);
    out
}

fn key(args: &[u8]) -> String {
    format!("bench:{}", String::from_utf8_lossy(args))
}

async fn used_memory(conn: &mut MultiplexedConnection) -> Result<u64, String> {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(conn)
        .await
        .map_err(|e| format!("redis INFO: {e}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| "redis INFO has no used_memory".into())
}

/// One GET of a fixed key (or one MGET of fixed keys), each expected to hold `expect_len`
/// bytes.
pub struct RedisGet {
    conn: MultiplexedConnection,
    keys: Vec<String>,
    expect_len: usize,
}

impl Caller for RedisGet {
    async fn call(&mut self) -> Result<(), String> {
        let values: Vec<Option<Vec<u8>>> = if let [one] = self.keys.as_slice() {
            let value: Option<Vec<u8>> = redis::cmd("GET")
                .arg(one)
                .query_async(&mut self.conn)
                .await
                .map_err(|e| format!("redis GET: {e}"))?;
            vec![value]
        } else {
            redis::cmd("MGET")
                .arg(&self.keys)
                .query_async(&mut self.conn)
                .await
                .map_err(|e| format!("redis MGET: {e}"))?
        };
        if values.len() != self.keys.len() {
            return Err(format!("redis answered {} values", values.len()));
        }
        for v in values {
            match v {
                Some(v) if v.len() == self.expect_len => {}
                other => {
                    return Err(format!(
                        "redis answered {:?} bytes, expected {}",
                        other.map(|v| v.len()),
                        self.expect_len
                    ))
                }
            }
        }
        Ok(())
    }
}

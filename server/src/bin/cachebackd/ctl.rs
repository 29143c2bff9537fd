//! `cachebackd ctl`: a command-line client for operators, over the main service (`get`,
//! `set`, `invalidate`, `delete`, `invalidate-tags`), the admin service (`jobs`, `stats`, `invalidate-job`,
//! `delete-job`) and gRPC health (`health`). Text for people, `--json` for scripts: one JSON
//! document on stdout per command.
//!
//! ARGS are the item's positional arguments as a JSON array, as in `'["alice", 2]'`; they
//! are re-encoded the way every standard client encodes them (PROTOCOL.md, "Client
//! conventions": compact, keys sorted, non-ASCII escaped), so the item is the one the
//! clients read, however the array was typed. `--raw-args` sends the bytes as typed, for
//! jobs whose clients use another encoding.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use cachebackd_proto::v1::{
    self as pb, cacheback_admin_client::CachebackAdminClient, cacheback_client::CachebackClient,
};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// How to reach the daemon, and what to ask it.
#[derive(Debug, Clone, Args)]
pub(crate) struct CtlArgs {
    /// The daemon's address: host:port, http://host:port, https://host:port (TLS), or
    /// unix:/path/to.sock.
    #[arg(
        long,
        short = 'a',
        value_name = "ADDR",
        env = "CACHEBACKD_URL",
        default_value = "127.0.0.1:7070"
    )]
    pub addr: String,

    /// Read the bearer token from this file instead of CACHEBACKD_TOKEN (a token on the
    /// command line would show in `ps`).
    #[arg(long, value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,

    /// Send the token even over plaintext to a non-loopback address.
    #[arg(long, global = true)]
    pub allow_plaintext_token: bool,

    /// Print one JSON document instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// Send ARGS as typed instead of re-encoding the JSON array canonically.
    #[arg(long, global = true)]
    pub raw_args: bool,

    /// Give up on the call after this long.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// What `cachebackd ctl` can do.
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum CtlCommand {
    /// Read an item (fetching it on a miss as its job says, unless --no-fetch).
    Get {
        /// The job.
        job: String,
        /// The positional arguments as a JSON array, as in '["alice"]'.
        args: String,
        /// Answer MISS at once on a miss instead of waiting for a fetch.
        #[arg(long)]
        no_fetch: bool,
        /// Read what is stored and start nothing (no fetch, no refresh).
        #[arg(long)]
        peek: bool,
        /// Accept data at most this old: an older item is fetched before the answer.
        #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
        max_age: Option<Duration>,
    },
    /// Store data for an item directly.
    Set {
        /// The job.
        job: String,
        /// The positional arguments as a JSON array.
        args: String,
        /// The data (clients store JSON, as in '{"n":1}').
        data: String,
        /// Fresh for this long instead of the job's lifetime.
        #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
        lifetime: Option<Duration>,
        /// A tag stored with the item (repeat for more).
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
    },
    /// Mark an item stale now and schedule a refresh.
    Invalidate {
        /// The job.
        job: String,
        /// The positional arguments as a JSON array.
        args: String,
    },
    /// Remove an item.
    Delete {
        /// The job.
        job: String,
        /// The positional arguments as a JSON array.
        args: String,
    },
    /// List the jobs: config, workers, items, counters.
    Jobs,
    /// Daemon-wide figures: uptime, store size, totals.
    Stats,
    /// Mark every item, of any job, that carries one of the tags stale; each refreshes on
    /// its next Get.
    InvalidateTags {
        /// The tags (1 to 100).
        #[arg(required = true)]
        tags: Vec<String>,
    },
    /// Mark every item of a job stale; each refreshes on its next Get.
    InvalidateJob {
        /// The job.
        job: String,
    },
    /// Remove a job with all its items (refused while its workers are connected).
    DeleteJob {
        /// The job.
        job: String,
    },
    /// The daemon's gRPC health: SERVING or NOT_SERVING.
    Health,
}

/// The args bytes of an item: the JSON array re-encoded canonically, or as typed with
/// `--raw-args`.
fn item_args(typed: &str, raw: bool) -> Result<Vec<u8>, String> {
    if raw {
        return Ok(typed.as_bytes().to_vec());
    }
    let not_an_array = || {
        format!(
            "ARGS must be a JSON array of the positional arguments, as in '[\"alice\",2]', \
             not {typed:?} (--raw-args sends other bytes as typed)"
        )
    };
    match serde_json::from_str::<Value>(typed) {
        Ok(array @ Value::Array(_)) => {
            cachebackd_proto::args::encode_args(&array).map_err(|e| e.to_string())
        }
        _ => Err(not_an_array()),
    }
}

/// Runs one command; the process's exit code (1 for any error, said on stderr).
pub(crate) fn main(args: CtlArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cachebackd ctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(out) => {
            if args.json {
                println!("{}", out.json);
            } else {
                print!("{}", out.text);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cachebackd ctl: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A command's answer, both ways.
struct Output {
    text: String,
    json: Value,
}

/// The connection, with the credentials the client crate reads (`CACHEBACKD_TOKEN`, and
/// for an `https://` address `CACHEBACKD_TLS_CA` / `_CERT` / `_KEY`), so ctl talks to a
/// secured daemon exactly as an app server does.
async fn channel(args: &CtlArgs, limit: usize) -> Result<cacheback::Transport, String> {
    let addr = &args.addr;
    let url = if addr.starts_with("unix:") || addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let mut builder = cacheback::ClientBuilder::new(&url).max_message_size(limit);
    if let Some(file) = &args.token_file {
        let token = std::fs::read_to_string(file)
            .map_err(|e| format!("--token-file {}: {e}", file.display()))?;
        builder = builder.token(token.trim_end_matches(['\r', '\n']));
    }
    if args.allow_plaintext_token {
        builder = builder.allow_plaintext_token();
    }
    builder
        .connect()
        .await
        .map(|c| c.transport())
        .map_err(|e| e.to_string())
}

fn status_error(s: tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

async fn run(args: &CtlArgs) -> Result<Output, String> {
    let limit = cachebackd_proto::wire::CLIENT_MAX_MESSAGE_BYTES;
    let ch = channel(args, limit).await?;
    let mut main = CachebackClient::new(ch.clone())
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    // ListJobs of 10,000 jobs is several MiB: read whatever the daemon sends.
    let mut admin = CachebackAdminClient::new(ch.clone()).max_decoding_message_size(usize::MAX);
    match &args.command {
        CtlCommand::Get {
            job,
            args: a,
            no_fetch,
            peek,
            max_age,
        } => {
            let r = main
                .get(timed(
                    args.timeout,
                    pb::GetRequest {
                        job: job.clone(),
                        args: item_args(a, args.raw_args)?,
                        fetch_on_miss: no_fetch.then_some(false),
                        max_age: max_age.and_then(|d| prost_types::Duration::try_from(d).ok()),
                        peek: *peek,
                    },
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            let state = pb::ItemState::try_from(r.state)
                .map(|s| s.as_str_name().trim_start_matches("ITEM_STATE_").to_owned())
                .unwrap_or_else(|_| r.state.to_string());
            let mut json = json!({
                "state": state,
                "stored_at": r.stored_at.map(|t| rfc3339(t.try_into().ok())),
                "expires_at": r.expires_at.map(|t| rfc3339(t.try_into().ok())),
                "refresh_scheduled": r.refresh_scheduled,
                "fetched": r.fetched,
                "absent": r.absent,
                "tags": r.tags,
            });
            let data = match String::from_utf8(r.data.clone()) {
                Ok(s) => {
                    json["data"] = Value::String(s.clone());
                    s
                }
                Err(_) => {
                    let hex = hex(&r.data);
                    json["data_hex"] = Value::String(hex.clone());
                    format!("(not UTF-8; hex) {hex}")
                }
            };
            let mut text = format!(
                "state: {state}\nrefresh_scheduled: {}\nfetched: {}\n",
                r.refresh_scheduled, r.fetched
            );
            if let Some(t) = &json["stored_at"].as_str() {
                text += &format!("stored_at: {t}\n");
            }
            if let Some(t) = &json["expires_at"].as_str() {
                text += &format!("expires_at: {t}\n");
            }
            if !r.tags.is_empty() {
                text += &format!("tags: {}\n", r.tags.join(" "));
            }
            if r.absent {
                text += "absent: the origin has no such data\n";
            } else if state != "MISS" {
                text += &format!("data: {data}\n");
            }
            Ok(Output { text, json })
        }
        CtlCommand::Set {
            job,
            args: a,
            data,
            lifetime,
            tags,
        } => {
            let r = main
                .set(timed(
                    args.timeout,
                    pb::SetRequest {
                        job: job.clone(),
                        args: item_args(a, args.raw_args)?,
                        data: data.clone().into_bytes(),
                        lifetime: lifetime.and_then(|d| prost_types::Duration::try_from(d).ok()),
                        tags: tags.clone(),
                    },
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            let expires = rfc3339(r.expires_at.and_then(|t| t.try_into().ok()));
            Ok(Output {
                text: format!("stored; fresh until {expires}\n"),
                json: json!({ "expires_at": expires }),
            })
        }
        CtlCommand::Invalidate { job, args: a } => {
            let r = main
                .invalidate(timed(
                    args.timeout,
                    pb::InvalidateRequest {
                        job: job.clone(),
                        args: item_args(a, args.raw_args)?,
                    },
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            Ok(Output {
                text: format!(
                    "found: {}\nrefresh_scheduled: {}\n",
                    r.found, r.refresh_scheduled
                ),
                json: json!({ "found": r.found, "refresh_scheduled": r.refresh_scheduled }),
            })
        }
        CtlCommand::Delete { job, args: a } => {
            let r = main
                .delete(timed(
                    args.timeout,
                    pb::DeleteRequest {
                        job: job.clone(),
                        args: item_args(a, args.raw_args)?,
                    },
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            Ok(Output {
                text: format!("found: {}\n", r.found),
                json: json!({ "found": r.found }),
            })
        }
        CtlCommand::Jobs => {
            let r = admin
                .list_jobs(timed(args.timeout, pb::ListJobsRequest {}))
                .await
                .map_err(status_error)?
                .into_inner();
            let jobs: Vec<Value> = r.jobs.iter().map(job_json).collect();
            let mut text = format!(
                "{:<32} {:>7} {:>10} {:>12} {:>10} {:>10}\n",
                "JOB", "WORKERS", "ITEMS", "BYTES", "LIFETIME", "HIT%"
            );
            for j in &r.jobs {
                let c = j.counters.unwrap_or_default();
                let gets = c.gets_fresh + c.gets_stale + c.gets_miss;
                let hit = if gets == 0 {
                    "-".to_owned()
                } else {
                    format!(
                        "{:.1}",
                        100.0 * (c.gets_fresh + c.gets_stale) as f64 / gets as f64
                    )
                };
                let lifetime = j
                    .config
                    .as_ref()
                    .and_then(|c| c.lifetime)
                    .map(span)
                    .unwrap_or_default();
                text += &format!(
                    "{:<32} {:>7} {:>10} {:>12} {:>10} {:>10}\n",
                    j.name, j.workers, j.items, j.bytes, lifetime, hit
                );
            }
            if r.jobs.iter().any(|j| j.counting) {
                text += "(still counting the items stored at start: items and bytes so far)\n";
            }
            Ok(Output {
                text,
                json: json!({ "jobs": jobs }),
            })
        }
        CtlCommand::Stats => {
            let r = admin
                .stats(timed(args.timeout, pb::StatsRequest {}))
                .await
                .map_err(status_error)?
                .into_inner();
            let totals = counters_json(&r.totals.unwrap_or_default());
            let json = json!({
                "version": r.version,
                "started_at": rfc3339(r.started_at.and_then(|t| t.try_into().ok())),
                "uptime_seconds": r.uptime.map(|d| d.seconds as f64 + d.nanos as f64 / 1e9),
                "store_bytes": r.store_bytes,
                "jobs": r.jobs,
                "workers": r.workers,
                "items": r.items,
                "corrupt_records": r.corrupt_records,
                "store_moved_aside": r.store_moved_aside,
                "totals": totals,
            });
            let mut text = String::new();
            for (k, v) in json.as_object().into_iter().flatten() {
                match v {
                    Value::Object(inner) => {
                        for (k2, v2) in inner {
                            text += &format!("{k}.{k2}: {v2}\n");
                        }
                    }
                    Value::String(s) => text += &format!("{k}: {s}\n"),
                    v => text += &format!("{k}: {v}\n"),
                }
            }
            Ok(Output { text, json })
        }
        CtlCommand::InvalidateTags { tags } => {
            let r = main
                .invalidate_tags(timed(
                    args.timeout,
                    pb::InvalidateTagsRequest { tags: tags.clone() },
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            let mark = rfc3339(r.invalidated_before.and_then(|t| t.try_into().ok()));
            Ok(Output {
                text: format!(
                    "tags {}: items stored until {mark} are stale now\n",
                    tags.join(" ")
                ),
                json: json!({ "invalidated_before": mark }),
            })
        }
        CtlCommand::InvalidateJob { job } => {
            let r = admin
                .invalidate_job(timed(
                    args.timeout,
                    pb::InvalidateJobRequest { job: job.clone() },
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            let mark = rfc3339(r.invalidated_before.and_then(|t| t.try_into().ok()));
            Ok(Output {
                text: format!("job {job}: items stored until {mark} are stale now\n"),
                json: json!({ "invalidated_before": mark }),
            })
        }
        CtlCommand::DeleteJob { job } => {
            let r = admin
                .delete_job(timed(
                    args.timeout,
                    pb::DeleteJobRequest { job: job.clone() },
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            Ok(Output {
                text: match r.found {
                    true => format!("job {job} deleted with {} items\n", r.items_removed),
                    false => format!("job {job} was not known\n"),
                },
                json: json!({ "found": r.found, "items_removed": r.items_removed }),
            })
        }
        CtlCommand::Health => {
            let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
            let r = health
                .check(timed(
                    args.timeout,
                    tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    },
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            let status = tonic_health::pb::health_check_response::ServingStatus::try_from(r.status)
                .map(|s| s.as_str_name().to_owned())
                .unwrap_or_else(|_| r.status.to_string());
            Ok(Output {
                text: format!("{status}\n"),
                json: json!({ "status": status }),
            })
        }
    }
}

/// A request that gives up after `timeout`.
fn timed<T>(timeout: Duration, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(timeout);
    r
}

fn job_json(j: &pb::JobInfo) -> Value {
    let c = j.config.unwrap_or_default();
    json!({
        "name": j.name,
        "config": {
            "lifetime": c.lifetime.map(span),
            "refresh_timeout": c.refresh_timeout.map(span),
            "fetch_on_miss": c.fetch_on_miss,
            "fetch_on_stale_threshold": c.fetch_on_stale_threshold.map(span),
            "cache_ttl": c.cache_ttl.map(span),
            "early_refresh_beta": c.early_refresh_beta,
            "absent_lifetime": c.absent_lifetime.map(span),
            "error_ttl": c.error_ttl.map(span),
        },
        "workers": j.workers,
        "items": j.items,
        "bytes": j.bytes,
        "counting": j.counting,
        "invalidated_before": j.invalidated_before.map(|t| rfc3339(t.try_into().ok())),
        "counters": counters_json(&j.counters.unwrap_or_default()),
    })
}

fn counters_json(c: &pb::JobCounters) -> Value {
    json!({
        "gets_fresh": c.gets_fresh,
        "gets_stale": c.gets_stale,
        "gets_miss": c.gets_miss,
        "sync_fetches": c.sync_fetches,
        "refreshes_scheduled": c.refreshes_scheduled,
        "fetches_succeeded": c.fetches_succeeded,
        "fetches_failed": c.fetches_failed,
        "fetches_retried": c.fetches_retried,
        "fetches_in_flight": c.fetches_in_flight,
    })
}

/// A protobuf duration as humantime writes it (`5m`, `1h 30m`).
fn span(d: prost_types::Duration) -> String {
    Duration::try_from(d)
        .map(|d| humantime::format_duration(d).to_string())
        .unwrap_or_else(|_| format!("{}s", d.seconds))
}

fn rfc3339(t: Option<SystemTime>) -> String {
    match t {
        Some(t) => humantime::format_rfc3339_micros(t).to_string(),
        None => "-".into(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::item_args;

    #[test]
    fn args_are_re_encoded_as_every_client_encodes_them() {
        assert_eq!(
            item_args(r#"[ "alice", 2 ]"#, false).unwrap(),
            br#"["alice",2]"#
        );
        assert_eq!(
            item_args(r#"[{"z":1,"a":"caf\u00e9"}]"#, false).unwrap(),
            br#"[{"a":"caf\u00e9","z":1}]"#
        );
        assert_eq!(item_args("[]", false).unwrap(), b"[]");
        assert!(item_args("alice", false)
            .unwrap_err()
            .contains("JSON array"));
        assert!(item_args(r#"{"a":1}"#, false).is_err());
        assert_eq!(item_args("alice, 2", true).unwrap(), b"alice, 2");
    }
}

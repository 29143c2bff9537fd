//! What an operator can see: server reflection (as `grpcurl list` / `describe` use it) and
//! the Prometheus endpoint, whose counters move by exactly what the traffic did.

use cachebackd_proto::v1::ItemState;
use prost::Message;
use tonic_reflection::pb::v1::{
    server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
    server_reflection_response::MessageResponse, ServerReflectionRequest,
};

use crate::harness::*;
use crate::ops_support::*;

const JOB: &str = "ops-metrics";

async fn reflect(channel: tonic::transport::Channel, request: MessageRequest) -> MessageResponse {
    let mut client = ServerReflectionClient::new(channel);
    let mut responses = client
        .server_reflection_info(tokio_stream::once(ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        }))
        .await
        .expect("reflection stream")
        .into_inner();
    responses
        .message()
        .await
        .expect("reflection answer")
        .expect("one answer")
        .message_response
        .expect("a response")
}

#[tokio::test]
async fn reflection_lists_and_describes_the_services() {
    let d = Daemon::start().await;
    let ch = channel(&d).await;

    let MessageResponse::ListServicesResponse(list) =
        reflect(ch.clone(), MessageRequest::ListServices(String::new())).await
    else {
        panic!("not a service list");
    };
    let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "cacheback.v1.Cacheback",
            "cacheback.v1.CachebackAdmin",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
        ]
    );

    // describe: the file that holds a symbol, with its methods.
    let MessageResponse::FileDescriptorResponse(files) = reflect(
        ch.clone(),
        MessageRequest::FileContainingSymbol("cacheback.v1.Cacheback".into()),
    )
    .await
    else {
        panic!("not a file descriptor");
    };
    let file = files
        .file_descriptor_proto
        .iter()
        .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).expect("decode"))
        .find(|f| f.package() == "cacheback.v1")
        .expect("the cacheback.v1 file");
    let service = file
        .service
        .iter()
        .find(|s| s.name() == "Cacheback")
        .expect("service Cacheback");
    let methods: Vec<_> = service.method.iter().map(|m| m.name()).collect();
    assert_eq!(
        methods,
        [
            "Get",
            "Set",
            "Invalidate",
            "Delete",
            "RegisterJob",
            "GetMany",
            "InvalidateTags",
            "Subscribe",
        ]
    );
    assert!(file.message_type.iter().any(|m| m.name() == "GetRequest"));

    // The older v1alpha protocol, which many tools still speak, is served too.
    use tonic_reflection::pb::v1alpha::{
        server_reflection_client::ServerReflectionClient as Alpha,
        server_reflection_request::MessageRequest as AlphaRequest,
        server_reflection_response::MessageResponse as AlphaResponse,
        ServerReflectionRequest as AlphaReq,
    };
    let mut alpha = Alpha::new(ch);
    let mut responses = alpha
        .server_reflection_info(tokio_stream::once(AlphaReq {
            host: String::new(),
            message_request: Some(AlphaRequest::ListServices(String::new())),
        }))
        .await
        .expect("v1alpha stream")
        .into_inner();
    let answer = responses.message().await.expect("answer").expect("one");
    let Some(AlphaResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.iter().any(|n| n == "cacheback.v1.Cacheback"),
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .any(|n| n == "grpc.reflection.v1alpha.ServerReflection"),
        "{names:?}"
    );
}

#[tokio::test]
async fn metrics_scrape_moves_by_exactly_the_traffic() {
    let metrics_port = free_port();
    let addr = format!("127.0.0.1:{metrics_port}");
    let d = Daemon::builder()
        .args(["--metrics-listen", &addr])
        .start()
        .await;
    let worker = TestWorker::builder(JOB)
        .config(job_config(300.0, 30.0))
        .auto(|_args| Ok(b"\"fetched\"".to_vec()))
        .connect(&d.endpoint())
        .await;
    let mut client = d.client();

    let before = scrape(&addr).await;
    let gets =
        |outcome: &str| format!("cachebackd_gets_total{{job=\"{JOB}\",outcome=\"{outcome}\"}}");
    let fetches =
        |result: &str| format!("cachebackd_fetches_total{{job=\"{JOB}\",result=\"{result}\"}}");
    assert_eq!(before.get(&gets("fresh")), 0.0);
    assert!(
        before.has(&gets("fresh")),
        "a registered job's series exist at 0"
    );

    // Two fresh hits, one synchronous miss, one asynchronous miss, one stale hit.
    set(&mut client, JOB, b"[\"a\"]", b"\"set\"".to_vec(), None).await;
    assert_eq!(
        get(&mut client, JOB, b"[\"a\"]").await.state(),
        ItemState::Fresh
    );
    assert_eq!(
        get(&mut client, JOB, b"[\"a\"]").await.state(),
        ItemState::Fresh
    );
    let sync = get(&mut client, JOB, b"[\"b\"]").await;
    assert!(sync.fetched);
    let r = get_no_wait(&mut client, JOB, b"[\"c\"]").await;
    assert_eq!(r.state(), ItemState::Miss);
    assert!(r.refresh_scheduled);
    set(
        &mut client,
        JOB,
        b"[\"s\"]",
        b"\"old\"".to_vec(),
        Some(dur(0.0)),
    )
    .await;
    let r = get(&mut client, JOB, b"[\"s\"]").await;
    assert_eq!(r.state(), ItemState::Stale);
    assert!(r.refresh_scheduled);

    // The two background fetches land (the worker answers them on its own).
    let after = eventually(WAIT, || async {
        let s = scrape(&addr).await;
        (s.get(&fetches("succeeded")) == 3.0
            && s.get(&job_sample("cachebackd_fetches_in_flight", JOB)) == 0.0
            && s.get(&job_sample("cachebackd_stored_items", JOB)) == 4.0
            && s.get(&job_sample("cachebackd_stored_data_bytes", JOB)) == 32.0)
            .then_some(s)
    })
    .await;
    assert_eq!(worker.fetch_count(), 3);

    let delta = |sample: &str| after.get(sample) - before.get(sample);
    assert_eq!(delta(&gets("fresh")), 2.0);
    assert_eq!(delta(&gets("stale")), 1.0);
    assert_eq!(delta(&gets("miss")), 2.0);
    assert_eq!(
        delta(&job_sample("cachebackd_sync_fetches_total", JOB)),
        1.0
    );
    assert_eq!(
        delta(&job_sample("cachebackd_refreshes_scheduled_total", JOB)),
        2.0
    );
    assert_eq!(delta(&fetches("succeeded")), 3.0);
    assert_eq!(delta(&fetches("failed")), 0.0);
    assert_eq!(
        delta(&job_sample("cachebackd_fetches_retried_total", JOB)),
        0.0
    );
    assert_eq!(
        delta(&job_sample("cachebackd_fetch_duration_seconds_count", JOB)),
        3.0
    );
    // a ("set"), b, c and s (all "fetched"): 5 + 3 × 9 bytes of data.
    assert_eq!(
        after.get(&job_sample("cachebackd_stored_data_bytes", JOB)),
        32.0
    );
    assert_eq!(after.get(&job_sample("cachebackd_workers", JOB)), 1.0);
    assert!(after.get("cachebackd_store_size_bytes") > 0.0);
    assert!(after.has("cachebackd_uptime_seconds"));
    assert_eq!(after.get("cachebackd_corrupt_records_total"), 0.0);
    assert_eq!(after.get("cachebackd_stores_moved_aside_total"), 0.0);

    // A failed fetch: counted as failed; the next fetch of that item counts as a retry.
    let failing = TestWorker::builder("ops-metrics-failing")
        .config(job_config(300.0, 30.0))
        .auto(|_| Err("backend down".into()))
        .connect(&d.endpoint())
        .await;
    let err = try_get(&mut client, "ops-metrics-failing", b"[1]", None)
        .await
        .expect_err("the fetch fails");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    let _ = try_get(&mut client, "ops-metrics-failing", b"[1]", None).await;
    assert_eq!(failing.fetch_count(), 2);
    let s = scrape(&addr).await;
    let failing_fetches = |result: &str| {
        format!("cachebackd_fetches_total{{job=\"ops-metrics-failing\",result=\"{result}\"}}")
    };
    assert_eq!(s.get(&failing_fetches("failed")), 2.0);
    assert_eq!(s.get(&failing_fetches("succeeded")), 0.0);
    assert_eq!(
        s.get(&job_sample(
            "cachebackd_fetches_retried_total",
            "ops-metrics-failing"
        )),
        1.0
    );
    assert_eq!(
        s.get(&job_sample(
            "cachebackd_sync_fetches_total",
            "ops-metrics-failing"
        )),
        2.0
    );

    // Prometheus text by default; OpenMetrics when asked for.
    let (status, content_type, _) = scrape_raw(&addr, None).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let (_, content_type, body) =
        scrape_raw(&addr, Some("application/openmetrics-text; version=1.0.0")).await;
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
}

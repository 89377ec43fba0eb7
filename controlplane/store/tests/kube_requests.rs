//! `KubeStore`'s exact requests, pinned: a `tower-test` mock stands where the API
//! server would, and each test plays the server's side, checking method, path,
//! query, content type and body of every request and answering as the API
//! server does (including 404, 409 and the Lease dance of heartbeats and leader
//! election).

use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use lightpool_model::*;
use lightpool_store::{Claim, Deleted, KubeStore, LeaseClaim, Store};
use serde_json::{json, Value};
use tower_test::mock::{self, Handle};

mod common;

type H = Handle<Request<Body>, Response<Body>>;

fn store() -> (KubeStore, H) {
    let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "lightpool-system");
    (KubeStore::new(client, "lightpool-controller"), handle)
}

/// Takes the next request, checks it, and answers `code` with `reply`. Returns
/// the request body for further checks.
async fn expect(
    h: &mut H,
    method: &str,
    uri: &str,
    content_type: Option<&str>,
    code: u16,
    reply: Value,
) -> Value {
    let (req, send) = h.next_request().await.expect("a request");
    assert_eq!(req.method().as_str(), method);
    assert_eq!(req.uri().to_string(), uri);
    assert_eq!(
        req.headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap()),
        content_type
    );
    let bytes = req.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    send.send_response(
        Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(reply.to_string().into_bytes()))
            .unwrap(),
    );
    body
}

fn api_status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": format!("{reason} (from the test)"), "reason": reason, "code": code})
}

fn volume_json(rv: &str, extra_meta: Value) -> Value {
    let mut v = json!({
        "apiVersion": "lightpool.io/v1alpha1", "kind": "Volume",
        "metadata": {"name": "v1", "uid": "u", "resourceVersion": rv, "generation": 1},
        "spec": {"size": "1Gi", "provisioning": "Thick", "placement": "PreferLocal",
                 "consumerNode": "node-a"},
    });
    if let (Some(m), Some(e)) = (v["metadata"].as_object_mut(), extra_meta.as_object()) {
        m.extend(e.clone());
    }
    v
}

const VOLUMES: &str = "/apis/lightpool.io/v1alpha1/volumes";

#[tokio::test]
async fn apply_is_a_forced_server_side_apply_of_what_the_caller_owns() {
    let (s, mut h) = store();
    let task = tokio::spawn(async move {
        let mut v = common::volume("v1", "1Gi");
        v.metadata.labels = Some([("app".into(), "db".into())].into());
        v.metadata.resource_version = Some("41".into());
        s.apply(&v).await
    });
    let body = expect(
        &mut h,
        "PATCH",
        &format!("{VOLUMES}/v1?&force=true&fieldManager=lightpool-controller"),
        Some("application/apply-patch+yaml"),
        200,
        volume_json("42", json!({"labels": {"app": "db"}})),
    )
    .await;
    assert_eq!(
        body,
        json!({
            "apiVersion": "lightpool.io/v1alpha1", "kind": "Volume",
            "metadata": {"name": "v1", "labels": {"app": "db"}, "resourceVersion": "41"},
            "spec": {"size": "1Gi", "provisioning": "Thick", "placement": "PreferLocal",
                     "consumerNode": "node-a", "affinity": {}},
        }),
        "no status, no finalizers, no nulls; the version as a precondition"
    );
    let got = task.await.unwrap().unwrap();
    assert_eq!(got.metadata.resource_version.as_deref(), Some("42"));
}

#[tokio::test]
async fn status_patch_carries_the_precondition_and_a_409_is_a_conflict() {
    let (s, mut h) = store();
    let status = VolumeStatus {
        phase: VolumePhase::Scheduled,
        node: Some("node-a".into()),
        ..Default::default()
    };
    let st = status.clone();
    let task = tokio::spawn(async move { s.patch_status::<Volume>("v1", &st, Some("7")).await });
    let body = expect(
        &mut h,
        "PATCH",
        &format!("{VOLUMES}/v1/status?&fieldManager=lightpool-controller"),
        Some("application/merge-patch+json"),
        409,
        api_status(409, "Conflict"),
    )
    .await;
    assert_eq!(body["metadata"], json!({"resourceVersion": "7"}));
    assert_eq!(body["status"], serde_json::to_value(&status).unwrap());
    assert_eq!(
        body["status"]["message"],
        Value::Null,
        "every field sent: absent ones as null"
    );
    assert!(body["status"].as_object().unwrap().contains_key("message"));
    let err = task.await.unwrap().unwrap_err();
    assert!(err.is_conflict(), "{err}");
}

#[tokio::test]
async fn get_of_a_missing_object_is_none_and_writes_to_it_are_not_found() {
    let (s, mut h) = store();
    let s2 = s.clone();
    let task = tokio::spawn(async move { s2.get::<Volume>("gone").await });
    expect(
        &mut h,
        "GET",
        &format!("{VOLUMES}/gone"),
        None,
        404,
        api_status(404, "NotFound"),
    )
    .await;
    assert_eq!(task.await.unwrap().unwrap(), None);
    let task = tokio::spawn(async move {
        s.set_finalizers::<Volume>("gone", &[VOLUME_FINALIZER.into()], Some("3"))
            .await
    });
    let body = expect(
        &mut h,
        "PATCH",
        &format!("{VOLUMES}/gone?&fieldManager=lightpool-controller"),
        Some("application/merge-patch+json"),
        404,
        api_status(404, "NotFound"),
    )
    .await;
    assert_eq!(
        body,
        json!({"metadata": {"finalizers": [VOLUME_FINALIZER], "resourceVersion": "3"}})
    );
    assert!(task.await.unwrap().unwrap_err().is_not_found());
}

#[tokio::test]
async fn delete_sends_the_precondition_and_tells_pending_from_gone() {
    let (s, mut h) = store();
    let s2 = s.clone();
    let task = tokio::spawn(async move { s2.delete::<Volume>("v1", Some("9")).await });
    let body = expect(
        &mut h,
        "DELETE",
        &format!("{VOLUMES}/v1?"),
        Some("application/json"),
        200,
        volume_json(
            "10",
            json!({"finalizers": [VOLUME_FINALIZER], "deletionTimestamp": "2026-01-01T00:00:00Z"}),
        ),
    )
    .await;
    assert_eq!(body["preconditions"], json!({"resourceVersion": "9"}));
    assert!(matches!(task.await.unwrap().unwrap(), Deleted::Pending(_)));
    // Gone at once: the server answers with a Status.
    let task = tokio::spawn(async move { s.delete::<Volume>("v2", None).await });
    let body = expect(
        &mut h,
        "DELETE",
        &format!("{VOLUMES}/v2?"),
        Some("application/json"),
        200,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 200}),
    )
    .await;
    assert_eq!(body.get("preconditions"), None);
    assert_eq!(task.await.unwrap().unwrap(), Deleted::Gone);
}

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/lightpool-system/leases";

fn lease_json(holder: &str, rv: &str, renew: &str, transitions: i32) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "lightpool-controller", "namespace": "lightpool-system", "resourceVersion": rv},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                 "acquireTime": "2026-01-01T00:00:00.000000Z", "renewTime": renew,
                 "leaseTransitions": transitions},
    })
}

/// Leader election on a Lease: create when absent, renew by PUT with the version
/// read, wait while another holder renews, take over after the duration with
/// the transition counted, and a 409 on the take-over (someone was quicker)
/// reported as held by the new holder.
#[tokio::test(start_paused = true)]
async fn lease_create_renew_and_take_over() {
    let (s, mut h) = store();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (res_tx, mut res) = tokio::sync::mpsc::unbounded_channel();
    let s2 = s.clone();
    tokio::spawn(async move {
        let mut claim = LeaseClaim::new("lightpool-controller", "ctrl-a", Duration::from_secs(15));
        while rx.recv().await.is_some() {
            res_tx.send(claim.tick(&s2).await.unwrap()).unwrap();
        }
    });
    let lease = format!("{LEASES}/lightpool-controller");

    // 1. Absent: GET 404, then POST.
    tx.send(()).unwrap();
    expect(
        &mut h,
        "GET",
        &lease,
        None,
        404,
        api_status(404, "NotFound"),
    )
    .await;
    let created = expect(
        &mut h,
        "POST",
        &format!("{LEASES}?&fieldManager=lightpool-controller"),
        Some("application/json"),
        201,
        lease_json("ctrl-a", "1", "2026-01-01T00:00:00.000000Z", 0),
    )
    .await;
    assert_eq!(created["metadata"]["name"], "lightpool-controller");
    assert_eq!(
        created["metadata"].get("resourceVersion"),
        None,
        "a create has no version"
    );
    assert_eq!(created["spec"]["holderIdentity"], "ctrl-a");
    assert_eq!(created["spec"]["leaseDurationSeconds"], 15);
    assert_eq!(created["spec"]["leaseTransitions"], 0);
    assert!(created["spec"]["renewTime"].is_string());
    assert_eq!(res.recv().await.unwrap(), Claim::Held);

    // 2. Ours: renewed with a PUT that carries the version read.
    tx.send(()).unwrap();
    expect(
        &mut h,
        "GET",
        &lease,
        None,
        200,
        lease_json("ctrl-a", "1", "2026-01-01T00:00:00.000000Z", 0),
    )
    .await;
    let renewed = expect(
        &mut h,
        "PUT",
        &format!("{lease}?&fieldManager=lightpool-controller"),
        Some("application/json"),
        200,
        lease_json("ctrl-a", "2", "2026-01-01T00:00:05.000000Z", 0),
    )
    .await;
    assert_eq!(renewed["metadata"]["resourceVersion"], "1");
    assert_eq!(renewed["spec"]["holderIdentity"], "ctrl-a");
    assert_eq!(
        renewed["spec"]["acquireTime"], "2026-01-01T00:00:00.000000Z",
        "acquire time kept"
    );
    assert_ne!(renewed["spec"]["renewTime"], "2026-01-01T00:00:00.000000Z");
    assert_eq!(res.recv().await.unwrap(), Claim::Held);

    // 3. Someone else took it (we were partitioned): we wait, no write.
    tx.send(()).unwrap();
    expect(
        &mut h,
        "GET",
        &lease,
        None,
        200,
        lease_json("ctrl-b", "5", "2026-01-01T00:01:00.000000Z", 1),
    )
    .await;
    assert_eq!(res.recv().await.unwrap(), Claim::HeldBy("ctrl-b".into()));
    tokio::time::advance(Duration::from_secs(14)).await;
    tx.send(()).unwrap();
    expect(
        &mut h,
        "GET",
        &lease,
        None,
        200,
        lease_json("ctrl-b", "5", "2026-01-01T00:01:00.000000Z", 1),
    )
    .await;
    assert_eq!(
        res.recv().await.unwrap(),
        Claim::HeldBy("ctrl-b".into()),
        "not yet expired"
    );

    // 4. Unrenewed for its whole duration: taken over, transitions counted; the
    //    server says 409 (ctrl-c was quicker), and we report ctrl-c.
    tokio::time::advance(Duration::from_secs(2)).await;
    tx.send(()).unwrap();
    expect(
        &mut h,
        "GET",
        &lease,
        None,
        200,
        lease_json("ctrl-b", "5", "2026-01-01T00:01:00.000000Z", 1),
    )
    .await;
    let take = expect(
        &mut h,
        "PUT",
        &format!("{lease}?&fieldManager=lightpool-controller"),
        Some("application/json"),
        409,
        api_status(409, "Conflict"),
    )
    .await;
    assert_eq!(take["metadata"]["resourceVersion"], "5");
    assert_eq!(take["spec"]["holderIdentity"], "ctrl-a");
    assert_eq!(take["spec"]["leaseTransitions"], 2);
    assert_ne!(
        take["spec"]["acquireTime"], "2026-01-01T00:00:00.000000Z",
        "a new acquire time"
    );
    expect(
        &mut h,
        "GET",
        &lease,
        None,
        200,
        lease_json("ctrl-c", "6", "2026-01-01T00:01:16.000000Z", 2),
    )
    .await;
    assert_eq!(res.recv().await.unwrap(), Claim::HeldBy("ctrl-c".into()));
}

const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/lightpool-system/events";

/// Events as kube's Recorder writes them: a POST of an events.k8s.io/v1 Event
/// regarding the object, a repeat a merge PATCH of its series, a series the
/// server let expire (404) a new POST; listed by a field selector on `regarding`.
#[tokio::test]
async fn events_are_posted_repeats_patch_the_series_and_lists_select_by_object() {
    use lightpool_store::{EventType, NewEvent};
    let (s, mut h) = store();
    let mut v = common::volume("v1", "1Gi");
    v.metadata.uid = Some("u-1".into());
    let ev = NewEvent::about(
        &v,
        EventType::Warning,
        "NoPoolFits",
        "Schedule",
        "1 pool: node-a full (needs 1 GiB, has 0 B)",
        "lightpool-controller",
    );
    let e = ev.clone();
    let task = tokio::spawn(async move {
        let a = s.record_event(&e).await.unwrap();
        let b = s.record_event(&e).await.unwrap();
        let c = s.record_event(&e).await.unwrap();
        let listed = s.events("Volume", "v1").await.unwrap();
        (a, b, c, listed)
    });
    let posted = expect(
        &mut h,
        "POST",
        &format!("{EVENTS}?&fieldManager=lightpool-controller"),
        Some("application/json"),
        201,
        json!({}),
    )
    .await;
    let name = posted["metadata"]["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("v1."), "{name}");
    let time = posted["eventTime"].as_str().unwrap().to_string();
    assert!(
        time.ends_with('Z') && time.contains('.'),
        "MicroTime: {time}"
    );
    assert_eq!(
        posted,
        json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": name, "namespace": "lightpool-system"},
            "eventTime": time,
            "regarding": {"apiVersion": "lightpool.io/v1alpha1", "kind": "Volume",
                          "name": "v1", "uid": "u-1"},
            "reason": "NoPoolFits", "action": "Schedule", "type": "Warning",
            "note": "1 pool: node-a full (needs 1 GiB, has 0 B)",
            "reportingController": "lightpool-controller",
            "reportingInstance": "lightpool-controller",
        })
    );
    let patched = expect(
        &mut h,
        "PATCH",
        &format!("{EVENTS}/{name}?&fieldManager=lightpool-controller"),
        Some("application/merge-patch+json"),
        200,
        json!({}),
    )
    .await;
    assert_eq!(patched["series"]["count"], 2);
    assert!(patched["series"]["lastObservedTime"].is_string());
    assert_eq!(patched.as_object().unwrap().len(), 1, "only the series");
    // The server let it expire: a new event, counted from 1.
    expect(
        &mut h,
        "PATCH",
        &format!("{EVENTS}/{name}?&fieldManager=lightpool-controller"),
        Some("application/merge-patch+json"),
        404,
        api_status(404, "NotFound"),
    )
    .await;
    let reposted = expect(
        &mut h,
        "POST",
        &format!("{EVENTS}?&fieldManager=lightpool-controller"),
        Some("application/json"),
        201,
        json!({}),
    )
    .await;
    assert!(reposted["series"].is_null());
    assert_eq!(reposted["reason"], "NoPoolFits");
    expect(
        &mut h,
        "GET",
        &format!("{EVENTS}?&fieldSelector=regarding.kind%3DVolume%2Cregarding.name%3Dv1"),
        None,
        200,
        json!({"apiVersion": "events.k8s.io/v1", "kind": "EventList", "metadata": {},
               "items": [{
                   "metadata": {"name": name, "namespace": "lightpool-system"},
                   "eventTime": "2026-01-01T00:00:00.000000Z",
                   "series": {"count": 5, "lastObservedTime": "2026-01-01T00:01:00.000000Z"},
                   "regarding": {"kind": "Volume", "name": "v1"},
                   "reason": "NoPoolFits", "action": "Schedule", "type": "Warning",
                   "note": "n", "reportingController": "lightpool-controller"}]}),
    )
    .await;
    let (a, b, c, listed) = task.await.unwrap();
    assert_eq!((a.count, b.count, c.count), (1, 2, 1));
    assert_eq!(b.name, a.name);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].count, 5);
    assert_eq!(listed[0].event.type_, EventType::Warning);
    assert_eq!(listed[0].last_time, "2026-01-01T00:01:00Z");
}

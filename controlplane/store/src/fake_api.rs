//! (Test support, with the `conformance` feature.)
//!
//! A fake Kubernetes API server for cluster-scoped custom resources, as a tower
//! service behind `kube::Client`: objects in memory, a global resourceVersion,
//! server-side apply (one manager), merge patches of the main resource and of
//! `/status`, deletes with finalizers and preconditions, lists and streaming
//! watches, and 404/409 Status bodies as the real server sends them. It runs the
//! shared store suite on `KubeStore` through the real kube client.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};

use kube::client::Body;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

type Resp = Response<UnsyncBoxBody<Bytes, Infallible>>;

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<(String, String), Value>,
    /// (resource, revision, type, object)
    history: Vec<(String, u64, &'static str, Value)>,
    watchers: Vec<(String, mpsc::UnboundedSender<Bytes>)>,
    /// Every request seen: "METHOD path?query".
    pub log: Vec<String>,
}

/// The fake server.
#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

fn status(code: u16, reason: &str, message: String) -> (StatusCode, Value) {
    (
        StatusCode::from_u16(code).unwrap(),
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code}),
    )
}

fn reply(code: StatusCode, body: Value) -> Resp {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed_unsync())
        .unwrap()
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

fn kind_of(resource: &str) -> &'static str {
    match resource {
        "volumes" => "Volume",
        "storagepools" => "StoragePool",
        "snapshots" => "Snapshot",
        "volumemigrations" => "VolumeMigration",
        _ => "Unknown",
    }
}

fn is_empty(v: &Value) -> bool {
    v.is_null()
        || v.as_object().is_some_and(|o| o.is_empty())
        || v.as_array().is_some_and(|a| a.is_empty())
}

fn clean_meta(v: &mut Value) {
    if let Some(m) = v["metadata"].as_object_mut() {
        m.retain(|_, x| !is_empty(x));
    }
}

impl State {
    fn publish(&mut self, resource: &str, kind: &'static str, obj: &Value) {
        self.history
            .push((resource.to_string(), self.rv, kind, obj.clone()));
        let line = Bytes::from(format!("{}\n", json!({"type": kind, "object": obj})));
        self.watchers
            .retain(|(r, tx)| r != resource || tx.send(line.clone()).is_ok());
    }

    fn write(&mut self, resource: &str, name: &str, mut obj: Value, event: &'static str) -> Value {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        clean_meta(&mut obj);
        if event == "DELETED" {
            self.objects
                .remove(&(resource.to_string(), name.to_string()));
        } else {
            self.objects
                .insert((resource.to_string(), name.to_string()), obj.clone());
        }
        self.publish(resource, event, &obj);
        obj
    }

    fn precondition(
        &self,
        current: &Value,
        rv: Option<&str>,
        name: &str,
        resource: &str,
    ) -> Option<(StatusCode, Value)> {
        match rv {
            Some(rv) if current["metadata"]["resourceVersion"].as_str() != Some(rv) => Some(status(
                409,
                "Conflict",
                format!("Operation cannot be fulfilled on {resource}.lightpool.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
            )),
            _ => None,
        }
    }
}

impl State {
    /// Leases under `<namespace>/leases[/<name>]`: create, get, replace.
    fn lease(&mut self, method: &Method, rest: &str, body: Value) -> (StatusCode, Value) {
        let parts: Vec<&str> = rest.split('/').collect();
        let ns = parts[0].to_string();
        let key = |name: &str| (format!("leases/{ns}"), name.to_string());
        match (method, parts.get(2)) {
            (&Method::POST, None) => {
                let name = body["metadata"]["name"].as_str().unwrap().to_string();
                if self.objects.contains_key(&key(&name)) {
                    return status(
                        409,
                        "AlreadyExists",
                        format!("leases.coordination.k8s.io \"{name}\" already exists"),
                    );
                }
                let mut obj = body;
                obj["metadata"]["namespace"] = json!(ns);
                self.rv += 1;
                obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
                self.objects.insert(key(&name), obj.clone());
                (StatusCode::CREATED, obj)
            }
            (&Method::GET, Some(name)) => match self.objects.get(&key(name)) {
                Some(v) => (StatusCode::OK, v.clone()),
                None => status(
                    404,
                    "NotFound",
                    format!("leases.coordination.k8s.io \"{name}\" not found"),
                ),
            },
            (&Method::PUT, Some(name)) => match self.objects.get(&key(name)).cloned() {
                None => status(
                    404,
                    "NotFound",
                    format!("leases.coordination.k8s.io \"{name}\" not found"),
                ),
                Some(cur) if cur["metadata"]["resourceVersion"] != body["metadata"]["resourceVersion"] => {
                    status(409, "Conflict", format!("Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"))
                }
                Some(_) => {
                    let mut obj = body;
                    obj["metadata"]["namespace"] = json!(ns);
                    self.rv += 1;
                    obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
                    self.objects.insert(key(name), obj.clone());
                    (StatusCode::OK, obj)
                }
            },
            _ => status(405, "MethodNotAllowed", format!("{method} {rest}")),
        }
    }
}

impl State {
    /// Events under `<namespace>/events[/<name>]`: create, merge patch, list
    /// by `regarding.kind` and `regarding.name`.
    fn event(
        &mut self,
        method: &Method,
        rest: &str,
        body: Value,
        selector: &str,
    ) -> (StatusCode, Value) {
        let (ns, name) = match rest.split_once("/events") {
            Some((ns, n)) => (ns.to_string(), n.strip_prefix('/').map(str::to_string)),
            None => return status(404, "NotFound", rest.to_string()),
        };
        let res = format!("events/{ns}");
        match (method, name) {
            (&Method::POST, None) => {
                let name = body["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if self.objects.contains_key(&(res.clone(), name.clone())) {
                    return status(
                        409,
                        "AlreadyExists",
                        format!("events.events.k8s.io \"{name}\" already exists"),
                    );
                }
                let v = self.write(&res, &name, body, "ADDED");
                (StatusCode::CREATED, v)
            }
            (&Method::PATCH, Some(name)) => {
                match self.objects.get(&(res.clone(), name.clone())).cloned() {
                    None => status(
                        404,
                        "NotFound",
                        format!("events.events.k8s.io \"{name}\" not found"),
                    ),
                    Some(mut cur) => {
                        merge(&mut cur, &body);
                        (StatusCode::OK, self.write(&res, &name, cur, "MODIFIED"))
                    }
                }
            }
            (&Method::GET, None) => {
                let want: Vec<(String, String)> = selector
                    .replace("%3D", "=")
                    .replace("%2C", ",")
                    .split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                let items: Vec<Value> = self
                    .objects
                    .iter()
                    .filter(|((r, _), _)| *r == res)
                    .map(|(_, v)| v.clone())
                    .filter(|v| {
                        want.iter().all(|(k, x)| match k.as_str() {
                            "regarding.kind" => v["regarding"]["kind"] == x.as_str(),
                            "regarding.name" => v["regarding"]["name"] == x.as_str(),
                            _ => false,
                        })
                    })
                    .collect();
                (
                    StatusCode::OK,
                    json!({"apiVersion": "events.k8s.io/v1", "kind": "EventList",
                           "metadata": {"resourceVersion": self.rv.to_string()}, "items": items}),
                )
            }
            (m, n) => status(405, "MethodNotAllowed", format!("{m} events {n:?}")),
        }
    }
}

impl FakeApi {
    /// A client talking to this server.
    pub fn client(&self) -> kube::Client {
        let me = self.clone();
        let svc = tower::service_fn(move |req: Request<Body>| {
            let me = me.clone();
            async move { Ok::<_, Infallible>(me.handle(req).await) }
        });
        kube::Client::new(svc, "default")
    }

    /// The requests seen so far.
    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    async fn handle(&self, req: Request<Body>) -> Resp {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query: BTreeMap<String, String> = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let content_type = req
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap()
        };
        if let Some(rest) = path.strip_prefix("/apis/coordination.k8s.io/v1/namespaces/") {
            let mut st = self.state.lock().unwrap();
            st.log.push(format!("{method} {path}"));
            let (code, value) = st.lease(&method, rest, body);
            return reply(code, value);
        }
        if let Some(rest) = path.strip_prefix("/apis/events.k8s.io/v1/namespaces/") {
            let mut st = self.state.lock().unwrap();
            st.log.push(format!("{method} {path}"));
            let selector = query.get("fieldSelector").cloned().unwrap_or_default();
            let (code, value) = st.event(&method, rest, body, &selector);
            return reply(code, value);
        }
        let parts: Vec<&str> = path
            .trim_start_matches("/apis/lightpool.io/v1alpha1/")
            .split('/')
            .collect();
        let resource = parts[0].to_string();
        let name = parts.get(1).map(|s| s.to_string());
        let sub = parts.get(2).copied();
        let mut st = self.state.lock().unwrap();
        st.log.push(format!("{method} {path}"));
        let (code, value) = match (&method, name) {
            (&Method::GET, None) if query.get("watch").is_some_and(|w| w == "true") => {
                let since: u64 = query
                    .get("resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let (tx, rx) = mpsc::unbounded_channel();
                for (r, rev, t, o) in &st.history {
                    if *r == resource && *rev > since {
                        tx.send(Bytes::from(format!(
                            "{}\n",
                            json!({"type": t, "object": o})
                        )))
                        .unwrap();
                    }
                }
                st.watchers.push((resource.clone(), tx));
                let stream =
                    UnboundedReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b)));
                return Response::builder()
                    .status(200)
                    .body(StreamBody::new(stream).boxed_unsync())
                    .unwrap();
            }
            (&Method::GET, None) => {
                let items: Vec<Value> = st
                    .objects
                    .iter()
                    .filter(|((r, _), _)| *r == resource)
                    .map(|(_, v)| v.clone())
                    .collect();
                (
                    StatusCode::OK,
                    json!({
                        "apiVersion": "lightpool.io/v1alpha1",
                        "kind": format!("{}List", kind_of(&resource)),
                        "metadata": {"resourceVersion": st.rv.to_string()},
                        "items": items,
                    }),
                )
            }
            (&Method::GET, Some(name)) => match st.objects.get(&(resource.clone(), name.clone())) {
                Some(v) => (StatusCode::OK, v.clone()),
                None => status(
                    404,
                    "NotFound",
                    format!("{resource}.lightpool.io \"{name}\" not found"),
                ),
            },
            (&Method::PATCH, Some(name)) if content_type == "application/apply-patch+yaml" => {
                let current = st.objects.get(&(resource.clone(), name.clone())).cloned();
                let rv = body["metadata"]["resourceVersion"]
                    .as_str()
                    .map(str::to_string);
                match current {
                    None if rv.is_some() => {
                        status(409, "Conflict", "the object has been modified".into())
                    }
                    None => {
                        let mut obj = json!({
                            "apiVersion": "lightpool.io/v1alpha1",
                            "kind": kind_of(&resource),
                            "metadata": {
                                "name": name, "uid": format!("uid-{}", st.rv + 1),
                                "creationTimestamp": "2026-01-01T00:00:00Z", "generation": 1,
                                "labels": body["metadata"]["labels"], "annotations": body["metadata"]["annotations"],
                            },
                            "spec": body["spec"],
                        });
                        clean_meta(&mut obj);
                        (
                            StatusCode::CREATED,
                            st.write(&resource, &name, obj, "ADDED"),
                        )
                    }
                    Some(cur) => match st.precondition(&cur, rv.as_deref(), &name, &resource) {
                        Some(e) => e,
                        None => {
                            let mut obj = cur.clone();
                            obj["spec"] = body["spec"].clone();
                            obj["metadata"]["labels"] = body["metadata"]["labels"].clone();
                            obj["metadata"]["annotations"] =
                                body["metadata"]["annotations"].clone();
                            clean_meta(&mut obj);
                            if obj == cur {
                                (StatusCode::OK, cur)
                            } else {
                                if obj["spec"] != cur["spec"] {
                                    obj["metadata"]["generation"] =
                                        json!(cur["metadata"]["generation"].as_i64().unwrap() + 1);
                                }
                                (StatusCode::OK, st.write(&resource, &name, obj, "MODIFIED"))
                            }
                        }
                    },
                }
            }
            (&Method::PATCH, Some(name)) => {
                assert_eq!(content_type, "application/merge-patch+json");
                match st.objects.get(&(resource.clone(), name.clone())).cloned() {
                    None => status(
                        404,
                        "NotFound",
                        format!("{resource}.lightpool.io \"{name}\" not found"),
                    ),
                    Some(cur) => {
                        let rv = body["metadata"]["resourceVersion"]
                            .as_str()
                            .map(str::to_string);
                        match st.precondition(&cur, rv.as_deref(), &name, &resource) {
                            Some(e) => e,
                            None => {
                                let mut obj = cur.clone();
                                let mut patch = body.clone();
                                if let Some(m) = patch["metadata"].as_object_mut() {
                                    m.remove("resourceVersion");
                                }
                                if sub == Some("status") {
                                    // The status subresource changes only the status.
                                    merge(&mut obj["status"], &patch["status"]);
                                } else {
                                    if let Some(p) = patch.as_object_mut() {
                                        p.remove("status");
                                    }
                                    merge(&mut obj, &patch);
                                }
                                clean_meta(&mut obj);
                                let deleting = !obj["metadata"]["deletionTimestamp"].is_null();
                                if obj == cur {
                                    (StatusCode::OK, cur)
                                } else if deleting && is_empty(&obj["metadata"]["finalizers"]) {
                                    (StatusCode::OK, st.write(&resource, &name, obj, "DELETED"))
                                } else {
                                    (StatusCode::OK, st.write(&resource, &name, obj, "MODIFIED"))
                                }
                            }
                        }
                    }
                }
            }
            (&Method::DELETE, Some(name)) => {
                match st.objects.get(&(resource.clone(), name.clone())).cloned() {
                    None => status(
                        404,
                        "NotFound",
                        format!("{resource}.lightpool.io \"{name}\" not found"),
                    ),
                    Some(cur) => {
                        let rv = body["preconditions"]["resourceVersion"]
                            .as_str()
                            .map(str::to_string);
                        match st.precondition(&cur, rv.as_deref(), &name, &resource) {
                            Some(e) => e,
                            None if is_empty(&cur["metadata"]["finalizers"]) => {
                                (StatusCode::OK, st.write(&resource, &name, cur, "DELETED"))
                            }
                            None if !cur["metadata"]["deletionTimestamp"].is_null() => {
                                (StatusCode::OK, cur)
                            }
                            None => {
                                let mut obj = cur;
                                obj["metadata"]["deletionTimestamp"] =
                                    json!("2026-01-01T00:00:01Z");
                                (StatusCode::OK, st.write(&resource, &name, obj, "MODIFIED"))
                            }
                        }
                    }
                }
            }
            _ => status(405, "MethodNotAllowed", format!("{method} {path}")),
        };
        reply(code, value)
    }
}

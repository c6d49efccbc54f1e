//! The label server in-process (the router without a socket), with a
//! renderer that paints flat colours: durability, queues, undo, restarts
//! and hostile requests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use psotune_label::plan::Setup;
use psotune_label::{App, Render};
use serde_json::{json, Value};
use tower::ServiceExt;

/// One flat colour per seed: a 4x4 PNG, instantly.
struct Flat;
impl Render for Flat {
    fn render(&mut self, _prompt: &str, seed: u64, out: &Path) -> psotune_label::Result<()> {
        let v = (seed * 37 % 256) as u8;
        image::RgbImage::from_pixel(4, 4, image::Rgb([v, 255 - v, 128])).save(out).unwrap();
        Ok(())
    }
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("psotune-label-server-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn setup(n: usize) -> Setup {
    Setup {
        model: "models/emoji".into(),
        lora: None,
        prompts: (0..n).map(|i| format!("an emoji of thing {i}")).collect(),
        pairs_per_prompt: 1,
        steps: None,
        seed: 0,
    }
}

/// Open the folder and sample every pair.
fn open(dir: &Path, n: usize, overlap: usize) -> Arc<App> {
    let app = App::open(dir, &setup(n), overlap, 1000, "tester").unwrap();
    app.run_renderer(&mut Flat).unwrap();
    app
}

async fn send(app: &Arc<App>, req: Request<Body>) -> (StatusCode, Value) {
    let res = app.clone().router().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn next(app: &Arc<App>, session: &str) -> Value {
    let (s, v) = send(app, Request::get(format!("/api/next?session={session}")).body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

fn post(path: &str, body: Value) -> Request<Body> {
    Request::post(path).header("content-type", "application/json").body(Body::from(body.to_string())).unwrap()
}

fn manifest(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("pairs.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test]
async fn a_choice_is_on_disk_when_the_answer_comes() {
    let dir = temp("durable");
    let app = open(&dir, 3, 1);
    let first = next(&app, "tab1").await;
    assert_eq!(first["status"], "pair");
    let pair = &first["pair"];
    let (s, v) = send(&app, post("/api/choice", json!({"session": "tab1", "labeler": "ann", "pair": pair["id"], "choice": "left"}))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Read from disk right after the response, before anything else runs.
    let m = manifest(&dir);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0]["pair"], pair["id"]);
    assert_eq!(format!("/{}", m[0]["chosen"].as_str().unwrap()), pair["left"].as_str().unwrap());
    assert_eq!(format!("/{}", m[0]["rejected"].as_str().unwrap()), pair["right"].as_str().unwrap());
    assert_eq!(m[0]["labeler"], "ann");
    // The answer is already the next pair.
    assert_eq!(v["status"], "pair");
    assert_ne!(v["pair"]["id"], pair["id"]);
    assert_eq!(v["progress"]["complete"], 1);
    // The training side reads the folder as it is.
    let pairs = psotune::data::PairManifest::open(&dir.join("pairs.jsonl")).unwrap();
    assert_eq!(pairs.items.len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn tabs_get_their_own_pairs_and_a_restart_skips_labelled_ones() {
    let dir = temp("queues");
    let app = open(&dir, 3, 1);
    let mut ids = Vec::new();
    for tab in ["t1", "t2", "t3"] {
        ids.push(next(&app, tab).await["pair"]["id"].as_str().unwrap().to_string());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "three tabs, three different pairs");
    assert_eq!(next(&app, "t4").await["status"], "waiting", "every pair is held");
    // t2 labels its pair; then the server stops.
    let held = next(&app, "t2").await["pair"]["id"].clone();
    let (s, _) = send(&app, post("/api/choice", json!({"session": "t2", "pair": held, "choice": "tie"}))).await;
    assert_eq!(s, StatusCode::OK);
    drop(app);
    let app = open(&dir, 3, 1);
    let mut seen = Vec::new();
    for tab in ["n1", "n2"] {
        seen.push(next(&app, tab).await["pair"]["id"].clone());
    }
    assert!(!seen.contains(&held), "the labelled pair is not shown again: {seen:?} vs {held}");
    assert_eq!(next(&app, "n3").await["status"], "waiting");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn undo_takes_back_the_last_choice_and_shows_it_again() {
    let dir = temp("undo");
    let app = open(&dir, 2, 1);
    let first = next(&app, "t1").await["pair"]["id"].clone();
    send(&app, post("/api/choice", json!({"session": "t1", "pair": first, "choice": "right"}))).await;
    assert_eq!(manifest(&dir).len(), 1);
    let (s, v) = send(&app, post("/api/undo", json!({"session": "t1"}))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["undone"], first);
    assert_eq!(v["pair"]["id"], first, "the undone pair comes back");
    assert!(manifest(&dir).is_empty());
    let (s, _) = send(&app, post("/api/undo", json!({"session": "t1"}))).await;
    assert_eq!(s, StatusCode::CONFLICT, "nothing left to undo");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn overlap_lets_a_second_labeller_judge_the_same_pair() {
    let dir = temp("overlap");
    let app = open(&dir, 1, 2);
    let (a, b) = (next(&app, "ann1").await, next(&app, "bob1").await);
    assert_eq!(a["status"], "pair");
    assert_eq!(b["status"], "waiting", "held by ann's tab");
    let id = a["pair"]["id"].clone();
    send(&app, post("/api/choice", json!({"session": "ann1", "labeler": "ann", "pair": id, "choice": "left"}))).await;
    let b = send(&app, Request::get("/api/next?session=bob1&labeler=bob").body(Body::empty()).unwrap()).await.1;
    assert_eq!(b["pair"]["id"], id);
    send(&app, post("/api/choice", json!({"session": "bob1", "labeler": "bob", "pair": id, "choice": "left"}))).await;
    let store = psotune_label::Store::open(&dir).unwrap();
    let stats = psotune_label::Agreement::of(store.labels());
    assert_eq!((stats.shared_pairs, stats.overall), (1, (1, 1)));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn bad_requests_are_refused_and_change_nothing() {
    let dir = temp("hostile");
    let app = open(&dir, 2, 1);
    let mine = next(&app, "t1").await["pair"]["id"].clone();
    let other = next(&app, "t2").await["pair"]["id"].clone();
    let cases: Vec<(Request<Body>, StatusCode)> = vec![
        (Request::get("/images/..%2F..%2Fetc%2Fpasswd").body(Body::empty()).unwrap(), StatusCode::BAD_REQUEST),
        (Request::get("/images/..%2Fpairs.jsonl").body(Body::empty()).unwrap(), StatusCode::BAD_REQUEST),
        (Request::get("/images/p00000-0-c.png").body(Body::empty()).unwrap(), StatusCode::BAD_REQUEST),
        (Request::get("/images/p99999-0-a.png").body(Body::empty()).unwrap(), StatusCode::NOT_FOUND),
        (Request::get("/images/../label.json").body(Body::empty()).unwrap(), StatusCode::NOT_FOUND),
        (Request::get("/api/next").body(Body::empty()).unwrap(), StatusCode::BAD_REQUEST),
        (Request::get("/api/next?session=../x").body(Body::empty()).unwrap(), StatusCode::BAD_REQUEST),
        (post("/api/choice", json!({"session": "t1", "pair": "p77777-0", "choice": "left"})), StatusCode::NOT_FOUND),
        (post("/api/choice", json!({"session": "t1", "pair": mine, "choice": "both"})), StatusCode::BAD_REQUEST),
        (post("/api/choice", json!({"session": "t1", "pair": other, "choice": "left"})), StatusCode::CONFLICT),
        (post("/api/choice", json!({"session": "t1", "pair": mine, "choice": "left", "extra": 1})), StatusCode::UNPROCESSABLE_ENTITY),
        (post("/api/choice", json!({"session": "t1", "labeler": "x\u{7}y", "pair": mine, "choice": "left"})), StatusCode::BAD_REQUEST),
        (Request::post("/api/choice").header("content-type", "application/json").body(Body::from("{not json")).unwrap(), StatusCode::BAD_REQUEST),
        (Request::post("/api/choice").body(Body::from(json!({"session": "t1", "pair": mine, "choice": "left"}).to_string())).unwrap(), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (
            Request::post("/api/choice")
                .header("content-type", "application/json")
                .body(Body::from(format!("{{\"session\":\"t1\",\"pair\":\"{}\",\"choice\":\"left\",\"pad\":\"{}\"}}", mine.as_str().unwrap(), "x".repeat(40_000))))
                .unwrap(),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (post("/api/undo", json!({"session": "t1"})), StatusCode::CONFLICT),
    ];
    for (req, want) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let (got, body) = send(&app, req).await;
        assert_eq!(got, want, "{what}: {body}");
        if want != StatusCode::NOT_FOUND || what.contains("api") {
            assert!(body["error"].is_string() || got == StatusCode::NOT_FOUND, "{what}: a message, got {body}");
        }
    }
    assert!(manifest(&dir).is_empty());
    assert_eq!(std::fs::read_to_string(dir.join("other.jsonl")).unwrap(), "");
    // The real image is served.
    let res = app.clone().router().oneshot(Request::get("/images/p00000-0-a.png").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "image/png");
    // And the session still works.
    let (s, _) = send(&app, post("/api/choice", json!({"session": "t1", "pair": mine, "choice": "left"}))).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = send(&app, post("/api/choice", json!({"session": "t1", "pair": mine, "choice": "left"}))).await;
    assert_eq!(s, StatusCode::CONFLICT, "a second choice on the same pair");
    assert_eq!(manifest(&dir).len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn the_page_is_served_without_the_network() {
    let dir = temp("page");
    let app = open(&dir, 1, 1);
    for (path, kind) in [("/", "text/html"), ("/app.js", "text/javascript"), ("/style.css", "text/css")] {
        let res = app.clone().router().oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers()["content-type"].to_str().unwrap().starts_with(kind));
        let text = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        // Nothing is fetched from another host.
        assert!(!text.contains("http://") && !text.contains("https://") && !text.contains("//cdn"), "{path} refers elsewhere");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

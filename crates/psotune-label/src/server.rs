//! The HTTP side: the page, its JSON API and the images, over one folder.
//!
//! Handlers take one mutex around the board and the store; a choice is
//! written and fsynced under it before the response leaves, which for a few
//! people clicking is milliseconds. The renderer runs on its own thread and
//! takes the lock only to pick a pair and to mark it sampled.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::board::{Board, Next, Progress};
use crate::plan::{check_or_save, Plan, Setup};
use crate::render::{tmp_path, Render};
use crate::store::{Label, Store, Verdict};
use crate::{Error, Result};

/// Requests larger than this are refused (a choice is about 200 bytes).
pub const BODY_LIMIT: usize = 16 * 1024;

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const STYLE_CSS: &str = include_str!("page/style.css");

struct Inner {
    board: Board,
    store: Store,
    /// Set when sampling failed; the page shows it.
    render_error: Option<String>,
}

/// A labelling session over one output folder.
pub struct App {
    dir: PathBuf,
    inner: Mutex<Inner>,
    wake: Condvar,
    stop: AtomicBool,
    default_labeler: String,
}

impl App {
    /// Open (or continue) the session in `dir`: the setup must match the
    /// one it was started with; recorded labels and sampled images are
    /// taken as they are.
    pub fn open(dir: &Path, setup: &Setup, overlap: usize, ahead: usize, default_labeler: &str) -> Result<Arc<Self>> {
        std::fs::create_dir_all(dir.join("images")).map_err(|e| Error::io(dir, e))?;
        check_or_save(dir, setup)?;
        let plan = Plan::new(setup)?;
        let store = Store::open(dir)?;
        let mut board = Board::new(plan, overlap, ahead);
        for label in store.labels() {
            let idx = board.plan.index_of(&label.pair).ok_or_else(|| Error::Session {
                path: dir.join(if matches!(label.verdict, Verdict::A | Verdict::B) { "pairs.jsonl" } else { "other.jsonl" }),
                msg: format!("pair {} is not one of this session's", label.pair),
            })?;
            board.add_label(idx, &label.labeler, &label.session);
        }
        for idx in 0..board.plan.pairs.len() {
            let spec = &board.plan.pairs[idx];
            if dir.join(spec.image('a')).is_file() && dir.join(spec.image('b')).is_file() {
                board.mark_ready(idx);
            }
        }
        Ok(Arc::new(Self {
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner { board, store, render_error: None }),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            default_labeler: clean_labeler(default_labeler).unwrap_or_else(|| "labeler".into()),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicked handler leaves the data as consistent as the files.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sample pairs ahead of the labellers until stopped; returns when
    /// everything is sampled or `stop` is called, or on the first error
    /// (which the page then shows).
    pub fn run_renderer(&self, renderer: &mut dyn Render) -> Result<()> {
        loop {
            let idx = {
                let mut inner = self.lock();
                loop {
                    if self.stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    if let Some(i) = inner.board.to_render(Instant::now()) {
                        break i;
                    }
                    if inner.board.progress("").sampled == inner.board.plan.pairs.len() {
                        return Ok(());
                    }
                    // Woken when a pair is taken; the timeout notices leases running out.
                    inner = self.wake.wait_timeout(inner, Duration::from_secs(5)).unwrap_or_else(|p| p.into_inner()).0;
                }
            };
            let spec = self.lock().board.plan.pairs[idx].clone();
            let result = (|| {
                for (side, seed) in [('a', spec.seed_a), ('b', spec.seed_b)] {
                    let path = self.dir.join(spec.image(side));
                    if !path.is_file() {
                        renderer.render(&spec.prompt, seed, &path)?;
                    }
                }
                Ok(())
            })();
            let mut inner = self.lock();
            match result {
                Ok(()) => inner.board.mark_ready(idx),
                Err(e) => {
                    for side in ['a', 'b'] {
                        let _ = std::fs::remove_file(tmp_path(&self.dir.join(spec.image(side))));
                    }
                    inner.render_error = Some(format!("sampling {:?} failed: {e}", spec.prompt));
                    return Err(e);
                }
            }
        }
    }

    /// Stop the renderer (after the image it is drawing).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake.notify_all();
    }

    pub fn progress(&self) -> Progress {
        self.lock().board.progress(&self.default_labeler)
    }

    /// The page, its API and the images.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/", get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX_HTML) }))
            .route("/app.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], APP_JS) }))
            .route("/style.css", get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE_CSS) }))
            .route("/api/next", get(next))
            .route("/api/choice", post(choice))
            .route("/api/undo", post(undo))
            .route("/images/{name}", get(image))
            .layer(DefaultBodyLimit::max(BODY_LIMIT))
            .with_state(self)
    }

    fn answer(&self, inner: &mut Inner, labeler: &str, session: &str, undone: Option<String>) -> Answer {
        let next = inner.board.next(labeler, session, Instant::now());
        // Taking a pair may have emptied the stock: let the renderer look.
        self.wake.notify_all();
        let progress = inner.board.progress(labeler);
        let (status, pair) = match next {
            Next::Pair(idx) => {
                let spec = &inner.board.plan.pairs[idx];
                let (left, right) = if spec.swapped() { ('b', 'a') } else { ('a', 'b') };
                let url = |side: char| format!("/{}", spec.image(side));
                ("pair", Some(PairView { id: spec.id.clone(), prompt: spec.prompt.clone(), left: url(left), right: url(right) }))
            }
            Next::Waiting if inner.render_error.is_some() => ("error", None),
            Next::Waiting => ("waiting", None),
            Next::Done => ("done", None),
        };
        Answer { status, pair, progress, labeler: labeler.to_string(), undone, error: inner.render_error.clone() }
    }
}

/// What the page gets back from every API call.
#[derive(Serialize)]
struct Answer {
    /// "pair", "waiting" (poll again), "done" or "error".
    status: &'static str,
    pair: Option<PairView>,
    progress: Progress,
    /// The name the choices are recorded under.
    labeler: String,
    /// The pair an undo took back.
    undone: Option<String>,
    error: Option<String>,
}

#[derive(Serialize)]
struct PairView {
    id: String,
    prompt: String,
    left: String,
    right: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NextQuery {
    session: String,
    #[serde(default)]
    labeler: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChoiceBody {
    session: String,
    #[serde(default)]
    labeler: String,
    pair: String,
    /// "left", "right", "tie" or "skip".
    choice: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UndoBody {
    session: String,
    #[serde(default)]
    labeler: String,
}

/// A refused request: its status and a message for the person.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        // 413 for an oversize body, 415 without a JSON content type, 400/422 otherwise.
        ApiError(r.status(), r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError(StatusCode::BAD_REQUEST, r.body_text())
    }
}

fn internal(e: Error) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// Session ids are made by the page: short tokens of safe characters.
fn check_session(s: &str) -> std::result::Result<(), ApiError> {
    if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(ApiError(StatusCode::BAD_REQUEST, "session must be 1-64 letters, digits, - or _".into()));
    }
    Ok(())
}

/// A labeller's name, trimmed; None when empty. Names over 64 characters
/// or with control characters are refused by [`labeler_of`].
fn clean_labeler(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

fn labeler_of(app: &App, s: &str) -> std::result::Result<String, ApiError> {
    if s.chars().count() > 64 || s.chars().any(char::is_control) {
        return Err(ApiError(StatusCode::BAD_REQUEST, "labeler must be at most 64 printable characters".into()));
    }
    Ok(clean_labeler(s).unwrap_or_else(|| app.default_labeler.clone()))
}

async fn next(State(app): State<Arc<App>>, q: std::result::Result<Query<NextQuery>, QueryRejection>) -> std::result::Result<Json<Answer>, ApiError> {
    let Query(q) = q?;
    check_session(&q.session)?;
    let labeler = labeler_of(&app, &q.labeler)?;
    let mut inner = app.lock();
    Ok(Json(app.answer(&mut inner, &labeler, &q.session, None)))
}

async fn choice(State(app): State<Arc<App>>, body: std::result::Result<Json<ChoiceBody>, JsonRejection>) -> std::result::Result<Json<Answer>, ApiError> {
    let Json(c) = body?;
    check_session(&c.session)?;
    let labeler = labeler_of(&app, &c.labeler)?;
    let mut inner = app.lock();
    let Some(idx) = inner.board.plan.index_of(&c.pair) else {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no pair {:?} in this session", c.pair)));
    };
    let spec = inner.board.plan.pairs[idx].clone();
    let verdict = match (c.choice.as_str(), spec.swapped()) {
        ("left", false) | ("right", true) => Verdict::A,
        ("left", true) | ("right", false) => Verdict::B,
        ("tie", _) => Verdict::Tie,
        ("skip", _) => Verdict::Skip,
        (other, _) => return Err(ApiError(StatusCode::BAD_REQUEST, format!("choice must be left, right, tie or skip, not {other:?}"))),
    };
    if let Err(why) = inner.board.check(idx, &labeler, &c.session, Instant::now()) {
        return Err(ApiError(StatusCode::CONFLICT, format!("pair {} cannot be labelled now: {why}", c.pair)));
    }
    inner.store.record(Label::new(&spec, verdict, &labeler, &c.session)).map_err(internal)?;
    inner.board.add_label(idx, &labeler, &c.session);
    Ok(Json(app.answer(&mut inner, &labeler, &c.session, None)))
}

async fn undo(State(app): State<Arc<App>>, body: std::result::Result<Json<UndoBody>, JsonRejection>) -> std::result::Result<Json<Answer>, ApiError> {
    let Json(u) = body?;
    check_session(&u.session)?;
    let labeler = labeler_of(&app, &u.labeler)?;
    let mut inner = app.lock();
    let Some(label) = inner.store.undo(&u.session).map_err(internal)? else {
        return Err(ApiError(StatusCode::CONFLICT, "nothing to undo in this tab".into()));
    };
    let idx = inner.board.plan.index_of(&label.pair).expect("recorded labels are of the plan");
    inner.board.remove_label(idx, &u.session, Instant::now());
    Ok(Json(app.answer(&mut inner, &labeler, &u.session, Some(label.pair))))
}

async fn image(State(app): State<Arc<App>>, UrlPath(name): UrlPath<String>) -> std::result::Result<Response, ApiError> {
    // Only the names the renderer writes: p<digits>-<digits>-<a|b>.png.
    let ok = name.strip_suffix(".png").and_then(|s| s.strip_prefix('p')).is_some_and(|s| {
        let parts: Vec<&str> = s.split('-').collect();
        parts.len() == 3
            && [parts[0], parts[1]].iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            && (parts[2] == "a" || parts[2] == "b")
    });
    if !ok {
        return Err(ApiError(StatusCode::BAD_REQUEST, format!("{name:?} is not an image of this session")));
    }
    let path = app.dir.join("images").join(&name);
    match tokio::fs::read(&path).await {
        Ok(bytes) => Ok(([(header::CONTENT_TYPE, "image/png"), (header::CACHE_CONTROL, "max-age=3600")], bytes).into_response()),
        Err(_) => Err(ApiError(StatusCode::NOT_FOUND, format!("no image {name}"))),
    }
}

/// How `psotune label` serves a folder.
pub struct ServeOptions {
    pub host: String,
    /// 0: any free port.
    pub port: u16,
}

/// Serve `app` until Ctrl-C, sampling with `renderer` on a thread of its
/// own; `on_listening` gets the bound address (print it for the person).
pub fn serve(app: Arc<App>, mut renderer: Box<dyn Render>, opts: &ServeOptions, on_listening: impl FnOnce(SocketAddr)) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Invalid(format!("starting the server runtime: {e}")))?;
    let addr = format!("{}:{}", opts.host, opts.port);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(&addr))
        .map_err(|e| Error::Invalid(format!("cannot listen on {addr}: {e}")))?;
    let local = listener.local_addr().map_err(|e| Error::Invalid(e.to_string()))?;
    let sampler = {
        let app = app.clone();
        std::thread::Builder::new()
            .name("label-render".into())
            .spawn(move || {
                if let Err(e) = app.run_renderer(renderer.as_mut()) {
                    eprintln!("label: sampling stopped: {e}");
                }
            })
            .map_err(|e| Error::Invalid(format!("starting the sampler: {e}")))?
    };
    on_listening(local);
    let router = app.clone().router();
    let served = rt.block_on(async {
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
    });
    app.stop();
    let _ = sampler.join();
    served.map_err(|e| Error::Invalid(format!("server: {e}")))
}

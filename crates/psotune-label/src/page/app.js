// The labelling page: asks the server for a pair, shows it, sends the
// choice and shows the next pair from the same response. Each tab has its
// own session id (sessionStorage: a reload keeps it, a new tab gets a new
// one), so each tab has its own queue and its own undo.
"use strict";
const $ = (id) => document.getElementById(id);

function sessionId() {
  let s = sessionStorage.getItem("psotune-session");
  if (!s) {
    const bytes = new Uint8Array(12);
    crypto.getRandomValues(bytes);
    s = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    sessionStorage.setItem("psotune-session", s);
  }
  return s;
}

const session = sessionId();
const nameBox = $("labeler");
nameBox.value = localStorage.getItem("psotune-labeler") || "";
nameBox.addEventListener("change", () => {
  localStorage.setItem("psotune-labeler", nameBox.value.trim());
  load();
});

let current = null; // the pair shown
let busy = false;   // a request is in flight: ignore input
let pollTimer = null;

// The pair shown and whether a request is in flight, also as data-
// attributes of #pair, so that a WebDriver check can read them the same
// way in every browser (script globals are not visible to Firefox's).
function publish() {
  const el = $("pair");
  el.dataset.id = current ? current.id : "";
  el.dataset.left = current ? current.left : "";
  el.dataset.right = current ? current.right : "";
  el.dataset.busy = busy ? "1" : "";
}

function setButtons(enabled) {
  for (const id of ["left", "right", "tie", "skip"]) $(id).disabled = !enabled;
}

function show(answer) {
  const p = answer.progress;
  $("progress").textContent =
    `${p.complete} of ${p.total} pairs done · ${answer.labeler}: ${p.mine} · sampled ${p.sampled}`;
  if (!nameBox.value) nameBox.placeholder = answer.labeler;
  $("status").textContent = answer.undone ? `took back your choice on ${answer.undone}` : "";
  clearTimeout(pollTimer);
  if (answer.status === "pair") {
    current = answer.pair;
    $("prompt").textContent = current.prompt;
    for (const side of ["left", "right"]) {
      const img = $(side).querySelector("img");
      img.classList.remove("pixel");
      img.onload = () => img.classList.toggle("pixel", img.naturalWidth < 256);
      img.src = current[side];
      $(side).classList.remove("picked");
    }
    $("pair").hidden = false;
    setButtons(true);
    publish();
  } else {
    current = null;
    publish();
    $("pair").hidden = true;
    setButtons(false);
    if (answer.status === "done") {
      $("prompt").textContent = "Every pair is labelled. Thank you!";
    } else if (answer.status === "error") {
      $("prompt").textContent = "Sampling stopped.";
      $("status").textContent = answer.error;
    } else {
      $("prompt").textContent = "Sampling the next pair...";
      pollTimer = setTimeout(load, 700);
    }
  }
}

async function call(url, body) {
  if (busy) return;
  busy = true;
  publish();
  try {
    const init = body
      ? { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) }
      : {};
    const r = await fetch(url, init);
    const answer = await r.json();
    if (!r.ok) {
      $("status").textContent = answer.error || `error ${r.status}`;
      if (r.status === 409) { busy = false; return load(); }
    } else {
      show(answer);
    }
  } catch (e) {
    $("status").textContent = `cannot reach psotune (${e.message}); retrying`;
    clearTimeout(pollTimer);
    pollTimer = setTimeout(load, 2000);
  } finally {
    busy = false;
    publish();
  }
}

function labeler() { return nameBox.value.trim(); }

function load() {
  const q = new URLSearchParams({ session, labeler: labeler() });
  return call(`/api/next?${q}`);
}

function choose(choice) {
  if (!current || busy) return;
  if (choice === "left" || choice === "right") $(choice).classList.add("picked");
  call("/api/choice", { session, labeler: labeler(), pair: current.id, choice });
}

function undo() {
  call("/api/undo", { session, labeler: labeler() });
}

$("left").addEventListener("click", () => choose("left"));
$("right").addEventListener("click", () => choose("right"));
$("tie").addEventListener("click", () => choose("tie"));
$("skip").addEventListener("click", () => choose("skip"));
$("undo").addEventListener("click", undo);
document.addEventListener("keydown", (e) => {
  if (e.target === nameBox || e.ctrlKey || e.metaKey || e.altKey) return;
  const keys = { "1": "left", "2": "right", "0": "tie", " ": "skip" };
  if (keys[e.key]) { e.preventDefault(); choose(keys[e.key]); }
  else if (e.key === "u" || e.key === "Backspace") { e.preventDefault(); undo(); }
});
load();

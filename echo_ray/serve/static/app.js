// ECHO web page: upload, POST /v1/reports/stream, show each finished block as it arrives.
// Report text is only ever set through textContent (never parsed as HTML).
"use strict";
const ROOT = document.querySelector('meta[name="echo-root"]').content;
const $ = (id) => document.getElementById(id);

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function showPreview(files) {
  const box = $("preview");
  box.replaceChildren();
  for (const f of files) {
    if (!/^image\/(png|jpeg)$/.test(f.type)) continue;  // DICOM has no browser preview
    const img = document.createElement("img");
    img.alt = f.name;
    img.src = URL.createObjectURL(f);
    box.appendChild(img);
  }
}

// Split a text buffer into complete SSE events; returns [events, rest].
function takeEvents(buffer) {
  const events = [];
  let cut;
  while ((cut = buffer.indexOf("\n\n")) >= 0) {
    const chunk = buffer.slice(0, cut);
    buffer = buffer.slice(cut + 2);
    let name = "message", data = "";
    for (const line of chunk.split("\n")) {
      if (line.startsWith("event:")) name = line.slice(6).trim();
      else if (line.startsWith("data:")) data += line.slice(5).trim();
    }
    if (data) events.push([name, JSON.parse(data)]);
  }
  return [events, buffer];
}

function onBlock(ev) {
  $("report").textContent = ev.text;
  const li = document.createElement("li");
  li.className = "block";
  li.textContent = `block ${ev.index + 1}: +${ev.new_tokens} tokens (${ev.tokens} total) at ${ev.elapsed_ms.toFixed(0)} ms`;
  $("blocks").appendChild(li);
  setStatus(`Generating... ${$("blocks").children.length} block(s)`);
}

function onFinal(ev) {
  $("report").textContent = ev.text;
  $("findings").textContent = ev.findings || "(none)";
  $("impression").textContent = ev.impression || "(none)";
  $("sections").hidden = false;
  $("summary").textContent =
    `${ev.mode} · ${ev.language} · ${ev.tokens} tokens · ${ev.blocks} blocks · ` +
    `${ev.forward_passes} forward passes · ${ev.latency_ms.toFixed(0)} ms total`;
  setStatus(`Done in ${ev.latency_ms.toFixed(0)} ms.`);
}

async function generate(event) {
  event.preventDefault();
  const files = $("images").files;
  if (!files.length) { setStatus("Choose at least one image.", true); return; }
  const body = new FormData();
  for (const f of files) body.append("images", f, f.name);
  body.append("language", $("language").value);
  body.append("mode", $("mode").value);
  if ($("max_new_tokens").value) body.append("max_new_tokens", $("max_new_tokens").value);
  const headers = {};
  if ($("token").value) headers["Authorization"] = "Bearer " + $("token").value;
  $("report").textContent = "";
  $("blocks").replaceChildren();
  $("summary").textContent = "";
  $("sections").hidden = true;
  $("submit").disabled = true;
  setStatus("Uploading...");
  try {
    const resp = await fetch(`${ROOT}/v1/reports/stream`, { method: "POST", body, headers });
    if (!resp.ok) {
      const err = await resp.json().catch(() => ({ error: resp.statusText }));
      setStatus(`Error ${resp.status}: ${err.error}`, true);
      return;
    }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      let events;
      [events, buffer] = takeEvents(buffer + decoder.decode(value, { stream: true }));
      for (const [name, data] of events) {
        if (name === "block") onBlock(data);
        else if (name === "final") onFinal(data);
        else if (name === "error") setStatus(`Error ${data.status}: ${data.error}`, true);
      }
    }
  } catch (e) {
    setStatus(`Request failed: ${e}`, true);
  } finally {
    $("submit").disabled = false;
  }
}

$("images").addEventListener("change", (e) => showPreview(e.target.files));
$("form").addEventListener("submit", generate);

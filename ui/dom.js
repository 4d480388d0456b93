// Small DOM helpers shared by the views: element building without innerHTML (no markup from data is ever
// parsed), number formats, the notice banner, the document dialog and the colour of a document's mark.

import { get, seg } from "./api.js";

/** h("div.cls#id", {attrs}, children...): an element; strings become text nodes; null children are skipped. */
export function h(spec, attrs = {}, ...children) {
  const [, tag, rest] = spec.match(/^([a-z0-9]+)(.*)$/i);
  const el = document.createElement(tag);
  for (const part of rest.match(/[.#][^.#]+/g) || []) {
    if (part[0] === ".") el.classList.add(part.slice(1));
    else el.id = part.slice(1);
  }
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name === "style" && typeof value === "object") Object.assign(el.style, value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

/** Replaces the contents of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export const fmt = (x, digits = 3) => (x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(digits));
export const ms = (x) => (x === null || x === undefined ? "–" : x < 10 ? `${x.toFixed(2)} ms` : `${x.toFixed(1)} ms`);
export const ci = (e, digits = 3) => `${fmt(e.value, digits)} [${fmt(e.ci95[0], digits)}, ${fmt(e.ci95[1], digits)}]`;
export const pct = (x) => `${(100 * x).toFixed(1)} %`;

let noticeTimer = null;

/** Shows an error (or, with kind "info", a confirmation) in the banner under the header. */
export function notice(message, kind = "error") {
  const el = document.getElementById("notice");
  el.textContent = message;
  el.className = kind === "info" ? "info" : "";
  el.hidden = false;
  clearTimeout(noticeTimer);
  if (kind === "info") noticeTimer = setTimeout(() => (el.hidden = true), 4000);
}

export function clearNotice() {
  document.getElementById("notice").hidden = true;
}

/** Reports a failed call in the banner: the problem's detail, else the error's message. */
export function failed(error) {
  const problem = error.problem;
  notice(problem ? `${problem.title || "Error"} (${error.status}): ${problem.detail || ""}` : String(error.message || error));
}

/** Opens the dialog with a document's whole text and metadata. */
export async function openDocument(id) {
  const dialog = document.getElementById("doc-dialog");
  const title = document.getElementById("doc-title");
  const text = document.getElementById("doc-text");
  const meta = document.getElementById("doc-meta");
  fill(title, id);
  fill(text, "Loading…");
  fill(meta);
  if (!dialog.open) dialog.showModal();
  try {
    const doc = await get(`/v1/documents/${seg(id)}`);
    fill(text, doc.text);
    const rows = Object.entries(doc.metadata || {}).map(([k, v]) => [h("dt", {}, k), h("dd", {}, typeof v === "string" ? v : JSON.stringify(v))]);
    if (doc.updated_at) rows.push([h("dt", {}, "updated"), h("dd", {}, doc.updated_at)]);
    fill(meta, rows);
  } catch (error) {
    fill(text, `Could not load the document: ${error.message}`);
  }
}

/**
 * Distinct colours for the ids of one comparison, in order of first appearance: hues a golden angle apart, so
 * no two ids of one page share a colour and the same id has the same colour in every column.
 */
export function markColours(ids) {
  const colours = new Map();
  for (const id of ids) {
    if (colours.has(id)) continue;
    const i = colours.size;
    const hue = ((i * 137.508) % 360).toFixed(1);
    const light = [42, 58, 34][Math.floor(i / 8) % 3];
    colours.set(id, `hsl(${hue}, 70%, ${light}%)`);
  }
  return colours;
}

/** The value of the `name` query parameter of the current hash route (`#/view?x=1`). */
export function routeParams() {
  const hash = location.hash.replace(/^#/, "");
  const q = hash.indexOf("?");
  return new URLSearchParams(q >= 0 ? hash.slice(q + 1) : "");
}

/**
 * Puts the view's parameters in the URL (a history entry, so back works and the URL can be shared). Returns
 * false when the URL already held them (no hashchange follows: the caller runs the view itself).
 */
export function setRouteParams(view, params) {
  const query = new URLSearchParams(params).toString();
  const hash = `#/${view}${query ? `?${query}` : ""}`;
  if (location.hash === hash) return false;
  location.hash = hash;
  return true;
}

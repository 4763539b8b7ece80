// The service's HTTP API: tokens, refresh, errors in plain words.
// The access token lives only in this module's memory. The refresh token never reaches script: the
// service keeps it in an HttpOnly cookie scoped to /api/auth, so a reload stays logged in by refreshing.

import { t } from "./i18n.js";

const BASE = (document.querySelector('meta[name="api-base"]')?.content || "").replace(/\/+$/, "");
// The cookie travels to the API's origin only when asked to; on the page's own origin that is the default.
const CREDENTIALS = BASE ? "include" : "same-origin";

let accessToken = null;
let refreshing = null;
let signedOut = () => {};

export class ApiError extends Error {
  constructor(status, message, detail = "") {
    super(message);
    this.status = status;
    this.detail = detail;
  }
}

/** Called whenever the session ends against the user's will (refresh refused). */
export function onSignedOut(handler) {
  signedOut = handler;
}

export function hasSession() {
  return accessToken !== null;
}

/** The URL of a WebSocket path on the API's origin. */
export function wsUrl(path) {
  return (BASE || location.origin).replace(/^http/, "ws") + path;
}

function keep(tokens) {
  accessToken = tokens.access_token; // tokens.refresh_token is ignored: the cookie carries it
}

function forget() {
  accessToken = null;
}

function plainWords(status, detail) {
  if (status === 0) return t("err.network");
  if (status === 401) return t("err.session");
  if (status === 404) return t("err.notFound");
  if (status === 413) return t("err.tooLarge");
  if (status === 415) return t("err.fileType");
  if (status === 403) return detail ? t("err.forbidden", { detail }) : t("err.server");
  if (status === 422 || status === 400) return t("err.invalid", { detail });
  // The API's own 429s say which limit (a daily token quota, the login limit); nginx's is an HTML page.
  if (status === 429) return detail ? t("err.limit", { detail }) : t("err.rate");
  // The API's own 502/503 name the cause (e.g. file storage refusing the appliance's key); nginx's say nothing.
  if (status === 502 || status === 503) return detail ? t("err.unavailable", { detail }) : t("err.busy");
  if (status === 504) return t("err.busy");
  return t("err.server");
}

async function send(method, path, { json, form, token } = {}) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form;
  }
  try {
    return await fetch(BASE + path, { method, headers, body, credentials: CREDENTIALS });
  } catch {
    throw new ApiError(0, t("err.network"));
  }
}

async function failure(response) {
  let detail = "";
  try {
    const data = await response.json();
    detail = typeof data.detail === "string" ? data.detail : (data.detail || []).map((d) => d.msg).join("; ");
  } catch {
    // not JSON (e.g. nginx's own error page): the status says enough
  }
  return new ApiError(response.status, plainWords(response.status, detail), detail);
}

/** Trade the refresh cookie for a new access token (and cookie); concurrent callers share one exchange. */
export function refresh() {
  refreshing ??= (async () => {
    const response = await send("POST", "/api/auth/refresh");
    if (!response.ok) {
      if (response.status === 401) forget();
      throw await failure(response);
    }
    keep(await response.json());
  })().finally(() => {
    refreshing = null;
  });
  return refreshing;
}

/** An authenticated request; refreshes the access token once on 401. Resolves to the Response when ok. */
export async function request(method, path, options = {}) {
  try {
    if (accessToken === null) await refresh();
    let response = await send(method, path, { ...options, token: accessToken });
    if (response.status === 401) {
      await refresh();
      response = await send(method, path, { ...options, token: accessToken });
    }
    if (!response.ok) throw await failure(response);
    return response;
  } catch (error) {
    if (error.status === 401) {
      forget();
      signedOut();
    }
    throw error;
  }
}

export async function getJson(path) {
  return (await request("GET", path)).json();
}

export async function postJson(path, json) {
  return (await request("POST", path, { json })).json();
}

export async function login(email, password) {
  const response = await send("POST", "/api/auth/login", { json: { email, password } });
  if (response.status === 401) throw new ApiError(401, t("err.credentials"));
  if (!response.ok) throw await failure(response);
  keep(await response.json());
}

export async function register(email, password, invitation = "") {
  const json = invitation ? { email, password, invitation } : { email, password };
  const response = await send("POST", "/api/auth/register", { json });
  if (response.status === 409) throw new ApiError(409, t("err.taken"));
  if (!response.ok) throw await failure(response);
}

/** Delete the account and all its data (the password confirms it); the session ends with it. */
export async function deleteAccount(password) {
  await request("DELETE", "/api/account", { json: { password } });
  forget();
}

/** Revoke this login and clear its cookie. */
export async function logout() {
  forget();
  await send("POST", "/api/auth/logout").catch(() => {});
}

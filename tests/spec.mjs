// Validates real requests, answers and frames against docs/openapi.yaml and docs/asyncapi.yaml with ajv
// (JSON Schema 2020-12, which OpenAPI 3.1 and AsyncAPI 3 schemas are), and records what was covered so a
// test can assert that every route and every frame kind was exercised.
import fs from "node:fs";
import path from "node:path";
import Ajv2020 from "ajv/dist/2020.js";
import addFormats from "ajv-formats";
import YAML from "yaml";
import { ROOT } from "./harness.mjs";

export const openapi = YAML.parse(fs.readFileSync(path.join(ROOT, "docs/openapi.yaml"), "utf8"));
export const asyncapi = YAML.parse(fs.readFileSync(path.join(ROOT, "docs/asyncapi.yaml"), "utf8"));

const ajv = new Ajv2020({ strict: false, allErrors: true });
addFormats(ajv);
ajv.addSchema(openapi, "openapi");
ajv.addSchema(asyncapi, "asyncapi");

const escape = (s) => s.replace(/~/g, "~0").replace(/\//g, "~1");
const get = (doc, pointer) => pointer.split("/").slice(1).reduce((o, k) => o?.[k.replace(/~1/g, "/").replace(/~0/g, "~")], doc);

function validate(doc, pointer, value, what) {
  const check = ajv.getSchema(`${doc}#${pointer}`);
  if (!check) throw new Error(`${what}: no schema at ${doc}#${pointer}`);
  if (!check(value)) {
    throw new Error(`${what} does not match ${doc}#${pointer}: ${ajv.errorsText(check.errors, { separator: "; " })}\nvalue: ${JSON.stringify(value).slice(0, 600)}`);
  }
}

/** Every (METHOD route status) and frame kind validated so far. */
export const covered = { http: new Set(), frames: new Set() };

/** The documented operation for `method` on the OpenAPI `route` template (e.g. "/users/{userId}/connections"). */
function operation(method, route) {
  const op = openapi.paths[route]?.[method.toLowerCase()];
  if (!op) throw new Error(`${method} ${route} is not in docs/openapi.yaml`);
  return op;
}

/** Validates a request body against the operation's requestBody schema. */
export function checkRequest(method, route, body) {
  operation(method, route);
  const pointer = `/paths/${escape(route)}/${method.toLowerCase()}/requestBody/content/application~1json/schema`;
  validate("openapi", pointer, body, `${method} ${route} request`);
}

/**
 * Validates an answer: its status must be documented for the operation, and its JSON body must match that
 * response's schema. `body` undefined: only the status is checked (e.g. 101, HEAD, event streams).
 */
export function checkResponse(method, route, status, body) {
  const op = operation(method, route);
  let pointer = `/paths/${escape(route)}/${method.toLowerCase()}/responses/${status}`;
  let response = op.responses[String(status)];
  if (!response) throw new Error(`${method} ${route} answered ${status}, which docs/openapi.yaml does not document (${Object.keys(op.responses)})`);
  if (response.$ref) {
    pointer = response.$ref.slice(1);
    response = get(openapi, pointer);
  }
  covered.http.add(`${method.toUpperCase()} ${route} ${status}`);
  if (body === undefined) return;
  if (!response.content?.["application/json"]) throw new Error(`${method} ${route} ${status} has a JSON body, but the spec documents none`);
  validate("openapi", `${pointer}/content/application~1json/schema`, body, `${method} ${route} ${status}`);
}

/** Answers outside any route (404 not_found, 405 method_not_allowed) are still the documented Error shape. */
export function checkErrorBody(body, code) {
  validate("openapi", "/components/schemas/Error", body, `error ${code}`);
  if (body.error !== code) throw new Error(`expected error ${code}, got ${body.error}`);
  covered.http.add(`* * ${code}`);
}

function messageName(frame, direction) {
  if (typeof frame === "string") return direction === "receive" ? "pong" : "ping";
  if (direction === "receive") return frame.envelopeId !== undefined ? "envelope" : frame.type;
  return frame.type;
}

/** Validates a frame seen on a socket (`receive`: from the server; `send`: from the client) or SSE event data. */
export function checkFrame(frame, direction = "receive", channel = "socket") {
  const name = messageName(frame, direction);
  const operationName = { "socket:receive": "receiveServerFrames", "socket:send": "sendClientFrames", "sse:receive": "receiveSseEvents" }[`${channel}:${direction}`];
  const allowed = asyncapi.operations[operationName].messages.map((m) => m.$ref.split("/").pop());
  if (!allowed.includes(name)) throw new Error(`${channel} ${direction}: a ${name} frame is not in docs/asyncapi.yaml (${allowed}): ${JSON.stringify(frame)}`);
  validate("asyncapi", `/components/messages/${name}/payload`, frame, `${channel} ${direction} ${name} frame`);
  covered.frames.add(`${channel} ${direction} ${name}`);
}

/** Close codes the server sent must be documented (or be the client's own code echoed back). */
export function checkClose(code, clientCode) {
  if (code === clientCode) return covered.frames.add("close echoed");
  const documented = Object.keys(asyncapi.channels.socket["x-close-codes"]).map(Number);
  if (!documented.includes(code)) throw new Error(`close code ${code} is not in docs/asyncapi.yaml's x-close-codes (${documented})`);
  covered.frames.add(`close ${code}`);
}

/** Every operation in openapi.yaml as "METHOD route". */
export const operations = () =>
  Object.entries(openapi.paths).flatMap(([route, item]) =>
    Object.keys(item).filter((k) => ["get", "post", "delete", "head", "put", "patch", "options"].includes(k)).map((m) => `${m.toUpperCase()} ${route}`));

/** Every message of an AsyncAPI operation as "channel direction name". */
export const messages = () =>
  Object.values(asyncapi.operations).flatMap((op) => {
    const channel = op.channel.$ref.split("/").pop();
    return op.messages.map((m) => `${channel} ${op.action} ${m.$ref.split("/").pop()}`);
  });

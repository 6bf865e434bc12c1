#!/usr/bin/env node
// Kubernetes-style validation of Istio custom resources, for tests/tests/manifests.rs.
//
// Why: CI has no Kubernetes API server, yet a manifest the API server would reject is a broken
// release. The API server checks a custom resource in three steps, and so does this script:
//
// 1. The CRD's structural schema (types, enums, lengths, patterns, required fields), with the
//    validators that @kubernetes-models/istio generates from Istio's own CRDs (npm registry,
//    pinned in package-lock.json, installed by `cargo xtask deps`).
// 2. Unknown fields (kubectl's strict field validation), against the field tree of the same
//    package's type declarations (`*.d.ts`, generated from the same CRDs): a misspelled field is
//    an error, `pluginConfig` (preserve-unknown-fields) stays open.
// 3. The CRDs' `x-kubernetes-validations` CEL rules and `x-kubernetes-list-type` uniqueness,
//    which the generated validators leave out. They are written down here (CEL_CHECKS, exact
//    rule text, message and path as in the CRD) with JavaScript equivalents. The CI-only test
//    `manifests_shared` compares this table with Istio's CRD file and holds the script to
//    Istio's own fixtures where that file is present; the project's fixtures in
//    tests/istio/fixtures/ hold it everywhere.
//
// Error texts follow the API server's wording (`spec.url in body should be at least 1 chars long`).
//
// Commands (JSON on stdout; exit 0 unless the input cannot be read):
//   validate FILE...   one record per YAML document:
//                      {file, index, kind, api_version, name, has_schema, expected_error, errors}
//                      (`_err`, Istio's fixture convention, is stripped and reported as expected_error)
//   dump FILE...       every YAML document as JSON: [{file, index, doc}]
//   cel-table          CEL_CHECKS as JSON, for the comparison with Istio's CRD file
//   crd-rules CRDS     the same table read from a CRD file (x-kubernetes-validations and list
//                      types of WasmPlugin v1alpha1, VirtualService v1, DestinationRule v1)

import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";
import Ajv from "ajv";
import { ENVOY_GATEWAY } from "./envoy-gateway.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const models = join(here, "node_modules", "@kubernetes-models");

// apiVersion/kind -> the package and module (validator) and declaration file (field tree):
// Istio's CRDs (@kubernetes-models/istio), Gateway API's (@kubernetes-models/gateway-api) and the
// Prometheus operator's (@kubernetes-models/prometheus-operator).
const KINDS = {
  "extensions.istio.io/v1alpha1/WasmPlugin": "istio/extensions.istio.io/v1alpha1/WasmPlugin",
  "networking.istio.io/v1/VirtualService": "istio/networking.istio.io/v1/VirtualService",
  "networking.istio.io/v1/DestinationRule": "istio/networking.istio.io/v1/DestinationRule",
  "networking.istio.io/v1beta1/VirtualService": "istio/networking.istio.io/v1beta1/VirtualService",
  "networking.istio.io/v1beta1/DestinationRule": "istio/networking.istio.io/v1beta1/DestinationRule",
  "networking.istio.io/v1alpha3/VirtualService": "istio/networking.istio.io/v1alpha3/VirtualService",
  "networking.istio.io/v1alpha3/DestinationRule": "istio/networking.istio.io/v1alpha3/DestinationRule",
  "gateway.networking.k8s.io/v1/Gateway": "gateway-api/gateway.networking.k8s.io/v1/Gateway",
  "gateway.networking.k8s.io/v1/HTTPRoute": "gateway-api/gateway.networking.k8s.io/v1/HTTPRoute",
  "monitoring.coreos.com/v1/PrometheusRule": "prometheus-operator/monitoring.coreos.com/v1/PrometheusRule",
};

// ---------------------------------------------------------------------------------------------
// Step 2: the field tree from the generated TypeScript declarations.
// The declarations use a small subset of TypeScript; anything outside it is an error, never
// silently "open".
// ---------------------------------------------------------------------------------------------

function tokenize(src) {
  const noComments = src.replace(/\/\*[\s\S]*?\*\//g, "").replace(/\/\/[^\n]*/g, "");
  const re = /\s*("(?:[^"\\]|\\.)*"|[A-Za-z_$][\w$]*|-?[0-9][\w.]*|[{}\[\]<>();:?|,.]|\S)/gy;
  const out = [];
  let m;
  while ((m = re.exec(noComments)) !== null) out.push(m[1]);
  return out;
}

// The packages other than Istio's split their declarations into a file per type: a name is
// looked up among the file's own interfaces and type aliases, then followed through its imports
// (`export type { IX as IFullName }` in the imported file). Each (file, name) is parsed once; a
// type that refers back to itself while being parsed is left open.
const declared = new Map();

function declarationsOf(file) {
  if (!declared.has(file)) {
    const src = readFileSync(file, "utf8");
    const imports = new Map();
    for (const m of src.matchAll(/import\s*\{([^}]*)\}\s*from\s*"([^"]+)"/g)) {
      for (const n of m[1].split(",").map((x) => x.trim()).filter(Boolean)) {
        const target = m[2].startsWith(".") ? join(dirname(file), m[2].replace(/\.js$/, ".d.ts")) : null;
        imports.set(n, target);
      }
    }
    const aliases = new Map();
    for (const m of src.matchAll(/export type \{([^}]*)\}/g))
      for (const part of m[1].split(",")) {
        const [local, as] = part.split(" as ").map((x) => x.trim());
        if (as) aliases.set(as, local);
      }
    declared.set(file, { toks: tokenize(src), imports, aliases, shapes: new Map() });
  }
  return declared.get(file);
}

function namedShape(file, name) {
  const d = declarationsOf(file);
  const local = d.aliases.get(name) || name;
  if (d.shapes.has(local)) return d.shapes.get(local) || { kind: "open" };
  const at = d.toks.findIndex((t, k) => (t === "interface" || t === "type") && d.toks[k + 1] === local);
  if (at >= 0) {
    d.shapes.set(local, null); // in progress: a self reference is open
    const shape = parseDeclaration(file, d.toks, at);
    d.shapes.set(local, shape);
    return shape;
  }
  if (d.imports.has(name)) {
    const target = d.imports.get(name);
    // ObjectMeta and the other apimachinery types: the API server's own code checks them.
    if (target === null) return { kind: "open" };
    return namedShape(target, name);
  }
  throw new Error(`declarations: no type ${name} in ${file}`);
}

function parseInterface(file, name) {
  return namedShape(file, name);
}

function parseDeclaration(file, toks, start) {
  let i = start;
  const isType = toks[i] === "type";
  i += 2;
  const peek = () => toks[i];
  const eat = (t) => {
    if (toks[i] !== t) throw new Error(`declarations: expected ${t} at token ${i}, got ${toks[i]}`);
    i++;
  };
  // `A & (Exclude<...> | {...})`: the generator's encoding of oneOf. A lists every field; the
  // intersection only narrows which combinations are allowed (the validators check that), so
  // the field tree skips it.
  function skipIntersections() {
    while (peek() === "&") {
      i++;
      const open = { "(": ")", "{": "}", "<": ">", "[": "]" };
      if (!(peek() in open)) throw new Error(`declarations: unsupported intersection at token ${i}`);
      const stack = [];
      do {
        const t = toks[i++];
        if (t in open) stack.push(open[t]);
        else if (t === stack[stack.length - 1]) stack.pop();
        if (i > toks.length) throw new Error("declarations: unbalanced intersection");
      } while (stack.length);
    }
  }
  function type() {
    const alts = [one()];
    skipIntersections();
    while (peek() === "|") {
      i++;
      alts.push(one());
      skipIntersections();
    }
    const shaped = alts.filter((a) => a.kind !== "leaf");
    if (shaped.length > 1) throw new Error(`declarations: union of shapes at token ${i}`);
    return shaped[0] || { kind: "leaf" };
  }
  function one() {
    const t = peek();
    if (t === "{") return object();
    if (t === "Array") {
      i++;
      eat("<");
      const items = type();
      eat(">");
      return { kind: "array", items };
    }
    if (t.startsWith('"') || /^-?[0-9]/.test(t) || ["string", "number", "boolean", "any", "unknown", "null"].includes(t)) {
      i++;
      return { kind: "leaf" };
    }
    if (t === "IObjectMeta") {
      i++;
      return { kind: "open" }; // metadata: checked by the API server's own code, not the CRD
    }
    if (/^I[A-Z]\w*$/.test(t)) {
      i++;
      return namedShape(file, t);
    }
    throw new Error(`declarations: unsupported type token ${t} at ${i}`);
  }
  function object() {
    eat("{");
    const props = {};
    let extra = null;
    while (peek() !== "}") {
      if (peek() === "[") {
        eat("[");
        i++; // key
        eat(":");
        eat("string");
        eat("]");
        eat(":");
        extra = type();
      } else {
        const n = JSON.parse(toks[i++]);
        if (peek() === "?") i++;
        eat(":");
        props[n] = type();
      }
      if (peek() === ";" || peek() === ",") i++;
    }
    eat("}");
    if (Object.keys(props).length === 0 && extra === null) return { kind: "open" };
    return { kind: "object", props, extra };
  }
  if (isType) {
    eat("=");
    return type();
  }
  // `interface I extends A, B {…}`: A's and B's fields are I's too.
  const bases = [];
  if (peek() === "extends") {
    i++;
    bases.push(toks[i++]);
    while (peek() === ",") {
      i++;
      bases.push(toks[i++]);
    }
  }
  const own = object();
  for (const b of bases) {
    // TypeMeta (apiVersion, kind) from @kubernetes-models/base: not part of the checked body.
    if (declarationsOf(file).imports.get(b) === null) continue;
    const base = namedShape(file, b);
    if (base.kind === "open") return { kind: "open" };
    if (base.kind !== "object") throw new Error(`declarations: ${b} is not an object type`);
    if (own.kind === "open") return base;
    own.props = { ...base.props, ...own.props };
    own.extra = own.extra || base.extra;
  }
  return own;
}

function unknownFields(shape, value, path, errors) {
  if (value === null || value === undefined || shape.kind === "leaf" || shape.kind === "open") return;
  if (shape.kind === "array") {
    if (Array.isArray(value)) value.forEach((v, k) => unknownFields(shape.items, v, [...path, k], errors));
    return;
  }
  if (typeof value !== "object" || Array.isArray(value)) return;
  for (const [k, v] of Object.entries(value)) {
    if (k in shape.props) unknownFields(shape.props[k], v, [...path, k], errors);
    else if (shape.extra) unknownFields(shape.extra, v, [...path, k], errors);
    else errors.push(`${pathStr(path) || "<root>"}: unknown field "${k}"`);
  }
}

// ---------------------------------------------------------------------------------------------
// Step 3: CEL rules. Go's net/url.ParseRequestURI, which CEL's isURL()/url() use in Kubernetes
// (k8s.io/apiserver/pkg/cel/library/urls.go): enough of it to decide what Istio's url rule decides.
// ---------------------------------------------------------------------------------------------

const HOST_OK = new Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~!$&'()*+,;=:[]<>\"");
const USERINFO_OK = new Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._:~!$&'()*+,;=%@");
const HEX = /^[0-9a-fA-F]$/;

function checkEscapes(s, host) {
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c === "%") {
      if (i + 2 >= s.length || !HEX.test(s[i + 1]) || !HEX.test(s[i + 2])) throw new Error("invalid URL escape");
      i += 2;
      continue;
    }
    if (host && c.charCodeAt(0) < 0x80 && !HOST_OK.has(c)) throw new Error(`invalid character ${c} in host name`);
  }
}

function getScheme(raw) {
  for (let i = 0; i < raw.length; i++) {
    const c = raw[i];
    if (/[A-Za-z]/.test(c)) continue;
    if (/[0-9+\-.]/.test(c)) {
      if (i === 0) return ["", raw];
      continue;
    }
    if (c === ":") {
      if (i === 0) throw new Error("missing protocol scheme");
      return [raw.slice(0, i), raw.slice(i + 1)];
    }
    return ["", raw];
  }
  return ["", raw];
}

function parseHost(host) {
  if (host.startsWith("[")) {
    const end = host.lastIndexOf("]");
    if (end < 0) throw new Error("missing ']' in host");
    const port = host.slice(end + 1);
    if (port && !/^:[0-9]*$/.test(port)) throw new Error("invalid port after host");
    checkEscapes(host.slice(1, end), false);
    return;
  }
  const colon = host.lastIndexOf(":");
  if (colon >= 0 && !/^:[0-9]*$/.test(host.slice(colon))) throw new Error("invalid port");
  checkEscapes(host, true);
}

function parseRequestURI(raw) {
  if ([...raw].some((c) => c.charCodeAt(0) < 0x20 || c.charCodeAt(0) === 0x7f)) throw new Error("invalid control character in URL");
  if (raw === "") throw new Error("empty url");
  if (raw === "*") return "";
  let [scheme, rest] = getScheme(raw);
  scheme = scheme.toLowerCase();
  if (rest.endsWith("?") && rest.split("?").length === 2) rest = rest.slice(0, -1);
  else rest = rest.split("?")[0];
  if (!rest.startsWith("/")) {
    if (scheme) return scheme; // opaque URL such as mailto:x
    throw new Error("invalid URI for request");
  }
  if ((scheme || !rest.startsWith("///")) && rest.startsWith("//")) {
    const after = rest.slice(2);
    const slash = after.indexOf("/");
    const authority = slash < 0 ? after : after.slice(0, slash);
    rest = slash < 0 ? "" : after.slice(slash);
    const at = authority.lastIndexOf("@");
    if (at >= 0) {
      if ([...authority.slice(0, at)].some((c) => c.charCodeAt(0) < 0x80 && !USERINFO_OK.has(c))) throw new Error("invalid userinfo");
      checkEscapes(authority.slice(0, at), false);
    }
    parseHost(authority.slice(at + 1));
  }
  checkEscapes(rest, false);
  return scheme;
}

const isURL = (s) => {
  try {
    parseRequestURI(s);
    return true;
  } catch {
    return false;
  }
};

// Go's time.ParseDuration, which CEL's duration() uses.
function goDuration(s) {
  const units = { ns: 1e-9, us: 1e-6, "µs": 1e-6, "μs": 1e-6, ms: 1e-3, s: 1, m: 60, h: 3600 };
  let rest = s;
  let sign = 1;
  if (rest.startsWith("-") || rest.startsWith("+")) {
    sign = rest[0] === "-" ? -1 : 1;
    rest = rest.slice(1);
  }
  if (rest === "0") return 0;
  if (rest === "") throw new Error(`invalid duration ${JSON.stringify(s)}`);
  let total = 0;
  const re = /^([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)/;
  while (rest) {
    const m = re.exec(rest);
    if (!m || m[1] === "" || m[1] === ".") throw new Error(`invalid duration ${JSON.stringify(s)}`);
    total += parseFloat(m[1]) * units[m[2]];
    rest = rest.slice(m[0].length);
  }
  return sign * total;
}

const URL_SCHEMES = ["", "http", "https", "oci", "file"];
const has = (o, k) => o !== null && typeof o === "object" && k in o;

// Rule text (exact, as in Istio's CRDs) -> its meaning.
const RULES = {
  'isURL(self) ? (url(self).getScheme() in ["", "http", "https", "oci", "file"]) : (isURL("http://" + self) &&\nurl("http://" + self).getScheme() in ["", "http", "https", "oci", "file"])':
    (v) => (isURL(v) ? URL_SCHEMES.includes(parseRequestURI(v)) : isURL("http://" + v) && URL_SCHEMES.includes(parseRequestURI("http://" + v))),
  '!self.contains("*")': (v) => !v.includes("*"),
  'self.all(key, !key.contains("*"))': (v) => Object.keys(v).every((k) => !k.includes("*")),
  "self.all(key, key.size() != 0)": (v) => Object.keys(v).every((k) => k.length !== 0),
  "self.size() == 0": (v) => v.length === 0,
  '(has(self.valueFrom) ? self.valueFrom : "") != "HOST" || !has(self.value)': (v) => (has(v, "valueFrom") ? v.valueFrom : "") !== "HOST" || !has(v, "value"),
  "(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1": (v) =>
    ["selector", "targetRef", "targetRefs"].filter((k) => has(v, k)).length <= 1,
  "duration(self) >= duration('1ms')": (v) => goDuration(v) >= 1e-3,
};

const URL_RULE = Object.keys(RULES)[0];
const DURATION_RULE = "duration(self) >= duration('1ms')";
const DURATION_MSG = "must be a valid duration greater than 1ms";
const LABEL_RULES = (at) => [
  { path: at, rule: 'self.all(key, !key.contains("*"))', message: "wildcard not allowed in label key match" },
  { path: at, rule: "self.all(key, key.size() != 0)", message: "key must not be empty" },
  { path: `${at}.*`, rule: '!self.contains("*")', message: "wildcard not allowed in label value match" },
];

function trafficPolicyDurations() {
  const fields = [
    "connectionPool.http.http2KeepAlive.interval",
    "connectionPool.http.http2KeepAlive.timeout",
    "connectionPool.http.idleTimeout",
    "connectionPool.tcp.connectTimeout",
    "connectionPool.tcp.maxConnectionDuration",
    "connectionPool.tcp.tcpKeepalive.interval",
    "connectionPool.tcp.tcpKeepalive.time",
    "loadBalancer.warmup.duration",
    "loadBalancer.warmupDurationSecs",
    "outlierDetection.baseEjectionTime",
    "outlierDetection.interval",
  ];
  const out = [];
  for (const base of ["spec.trafficPolicy", "spec.subsets[*].trafficPolicy"])
    for (const level of ["", ".portLevelSettings[*]"])
      for (const f of fields) out.push({ path: `${base}${level}.${f}`, rule: DURATION_RULE, message: DURATION_MSG });
  return out;
}

// kind -> CEL rules ({path, rule, message}) and list-type constraints ({path, list, keys}).
// Paths: `a.b` fields, `[*]` every item, `.*` every map value.
export const CEL_CHECKS = {
  WasmPlugin: {
    rules: [
      { path: "spec", rule: "(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1", message: "only one of targetRefs or selector can be set" },
      ...LABEL_RULES("spec.selector.matchLabels"),
      { path: "spec.targetRef.namespace", rule: "self.size() == 0", message: "cross namespace referencing is not currently supported" },
      { path: "spec.targetRefs[*].namespace", rule: "self.size() == 0", message: "cross namespace referencing is not currently supported" },
      { path: "spec.url", rule: URL_RULE, message: "url must have schema one of [http, https, file, oci]" },
      { path: "spec.vmConfig.env[*]", rule: '(has(self.valueFrom) ? self.valueFrom : "") != "HOST" || !has(self.value)', message: "value may only be set when valueFrom is INLINE" },
    ],
    lists: [
      { path: "spec.match[*].ports", list: "map", keys: ["number"] },
      { path: "spec.vmConfig.env", list: "map", keys: ["name"] },
    ],
  },
  VirtualService: {
    rules: ["corsPolicy.maxAge", "fault.delay.exponentialDelay", "fault.delay.fixedDelay", "retries.backoff", "retries.perTryTimeout", "timeout"].map((f) => ({
      path: `spec.http[*].${f}`,
      rule: DURATION_RULE,
      message: DURATION_MSG,
    })),
    lists: [],
  },
  DestinationRule: {
    rules: [...trafficPolicyDurations(), ...LABEL_RULES("spec.workloadSelector.matchLabels")],
    lists: [],
  },
  // Gateway API's and the Prometheus operator's CEL rules are not written down here: their
  // documents are held to the packages' schemas and to strict unknown-field checks only.
  Gateway: { rules: [], lists: [] },
  HTTPRoute: { rules: [], lists: [] },
  PrometheusRule: { rules: [], lists: [] },
};

// Every (concrete path, value) that a pattern names in a document.
function select(doc, pattern) {
  const parts = pattern.replace(/\[\*\]/g, ".[*]").split(".");
  let found = [[[], doc]];
  for (const p of parts) {
    const next = [];
    for (const [path, v] of found) {
      if (v === null || typeof v !== "object") continue;
      if (p === "[*]") {
        if (Array.isArray(v)) v.forEach((x, k) => next.push([[...path, k], x]));
      } else if (p === "*") {
        if (!Array.isArray(v)) for (const [k, x] of Object.entries(v)) next.push([[...path, k], x]);
      } else if (!Array.isArray(v) && p in v) next.push([[...path, p], v[p]]);
    }
    found = next;
  }
  return found.filter(([, v]) => v !== null && v !== undefined);
}

function celErrors(kind, body) {
  const checks = CEL_CHECKS[kind];
  const errors = [];
  if (!checks) return [`${kind}: no CEL table (add the CRD's x-kubernetes-validations to CEL_CHECKS)`];
  for (const { path, rule, message } of checks.rules) {
    const check = RULES[rule];
    if (!check) {
      errors.push(`${path}: CEL rule not implemented: ${JSON.stringify(rule)}`);
      continue;
    }
    for (const [at, v] of select(body, path)) {
      let ok;
      try {
        ok = check(v);
      } catch (e) {
        ok = false;
      }
      if (!ok) errors.push(`${pathStr(at) || "<root>"}: Invalid value: "${jsonType(v)}": ${message}`);
    }
  }
  for (const { path, list, keys } of checks.lists) {
    for (const [at, v] of select(body, path)) {
      if (!Array.isArray(v)) continue;
      const seen = new Set();
      v.forEach((item, k) => {
        const ident = list === "map" ? JSON.stringify(keys.map((key) => (item && typeof item === "object" ? item[key] : undefined))) : JSON.stringify(item);
        if (seen.has(ident)) errors.push(`${pathStr([...at, k])}: Duplicate value: ${ident}`);
        seen.add(ident);
      });
    }
  }
  return errors;
}

// ---------------------------------------------------------------------------------------------
// Step 1 and the glue.
// ---------------------------------------------------------------------------------------------

function pathStr(parts) {
  let out = "";
  for (const p of parts) out += typeof p === "number" ? `[${p}]` : (out ? "." : "") + p;
  return out;
}

function jsonType(v) {
  if (v === null) return "null";
  if (Array.isArray(v)) return "array";
  if (typeof v === "number") return Number.isInteger(v) ? "integer" : "number";
  return typeof v;
}

function instancePath(p) {
  return p
    .split("/")
    .slice(1)
    .map((s) => s.replace(/~1/g, "/").replace(/~0/g, "~"))
    .map((s) => (/^[0-9]+$/.test(s) ? Number(s) : s));
}

function valueAt(doc, parts) {
  return parts.reduce((v, p) => (v === null || v === undefined ? v : v[p]), doc);
}

// An ajv error in the API server's words.
function k8sMessage(err, doc) {
  const parts = instancePath(err.instancePath);
  const where = pathStr(parts) || "<root>";
  const p = err.params || {};
  switch (err.keyword) {
    case "required":
      return `${pathStr([...parts, p.missingProperty])}: Required value`;
    case "type":
      return `${where} in body must be of type ${String(p.type).split(",")[0]}: "${jsonType(valueAt(doc, parts))}"`;
    case "minLength":
      return `${where} in body should be at least ${p.limit} chars long`;
    case "maxLength":
      return `${where} in body should be at most ${p.limit} chars long`;
    case "pattern":
      return `${where} in body should match '${p.pattern}'`;
    case "enum":
      return `${where}: Unsupported value: "${valueAt(doc, parts)}": supported values: ${p.allowedValues.map((x) => `"${x}"`).join(", ")}`;
    case "minimum":
      return `${where} in body should be greater than or equal to ${p.limit}`;
    case "maximum":
      return `${where} in body should be less than or equal to ${p.limit}`;
    case "maxItems":
      return `${where}: Too many: must have at most ${p.limit} items`;
    case "additionalProperties":
      return `${where}: unknown field "${p.additionalProperty}"`;
    default:
      return `${where}: ${err.message}`;
  }
}

const loaded = new Map();
const ajv = new Ajv({ allErrors: true, strict: false });
async function kindOf(apiVersion, kind) {
  const written = ENVOY_GATEWAY[`${apiVersion}/${kind}`];
  if (written) {
    if (!loaded.has(written)) loaded.set(written, { check: ajv.compile(written), source: "project" });
    return loaded.get(written);
  }
  const mod = KINDS[`${apiVersion}/${kind}`];
  if (!mod) return null;
  if (!loaded.has(mod)) {
    const m = await import(join(models, `${mod}.js`));
    const Model = m[kind];
    const shape = parseInterface(join(models, `${mod}.d.ts`), `I${kind}`);
    loaded.set(mod, { Model, shape, source: "registry" });
  }
  return loaded.get(mod);
}

async function validateDoc(doc, schema, kind) {
  const errors = [];
  if (doc === null || typeof doc !== "object" || Array.isArray(doc)) return ["<root> in body must be of type object"];
  if (schema.check) {
    if (!schema.check(doc)) for (const err of schema.check.errors) if (err.keyword !== "if") errors.push(k8sMessage(err, doc));
    return errors;
  }
  const meta = doc.metadata;
  if (!meta || typeof meta !== "object" || !meta.name) errors.push("metadata.name: Required value");
  const model = new schema.Model(doc);
  try {
    model.validate();
  } catch (e) {
    const errs = e.errors || e.details || [];
    if (!errs.length) errors.push(`<root>: ${e.message}`);
    for (const err of errs) errors.push(k8sMessage(err, doc));
  }
  const body = { ...doc };
  delete body.apiVersion;
  delete body.kind;
  unknownFields(schema.shape, body, [], errors);
  errors.push(...celErrors(kind, body));
  return errors;
}

function loadDocs(file) {
  const docs = parseAllDocuments(readFileSync(file, "utf8"));
  const out = [];
  for (const d of docs) {
    if (d.errors.length) throw new Error(`${file}: ${d.errors[0].message}`);
    const v = d.toJS();
    if (v !== null && v !== undefined) out.push(v);
  }
  return out;
}

async function cmdValidate(files) {
  const out = [];
  for (const file of files) {
    const docs = loadDocs(file);
    for (let index = 0; index < docs.length; index++) {
      const doc = docs[index];
      let expected = null;
      if (doc && typeof doc === "object" && "_err" in doc) {
        expected = doc._err;
        delete doc._err;
      }
      const apiVersion = doc?.apiVersion ?? null;
      const kind = doc?.kind ?? null;
      const schema = await kindOf(apiVersion, kind);
      out.push({
        file,
        index,
        kind,
        api_version: apiVersion,
        name: doc?.metadata?.name ?? null,
        has_schema: schema !== null,
        schema_source: schema ? schema.source : null,
        expected_error: expected,
        errors: schema ? await validateDoc(doc, schema, kind) : [],
      });
    }
  }
  return out;
}

// The CEL rules and list types of the CRDs in `file`, in CEL_CHECKS' shape.
function crdRules(file) {
  const want = { WasmPlugin: "v1alpha1", VirtualService: "v1", DestinationRule: "v1" };
  const out = {};
  function walk(s, path, acc) {
    if (!s || typeof s !== "object") return;
    for (const r of s["x-kubernetes-validations"] || []) acc.rules.push({ path, rule: r.rule, message: r.message });
    if (s["x-kubernetes-list-type"] && s["x-kubernetes-list-type"] !== "atomic")
      acc.lists.push({ path, list: s["x-kubernetes-list-type"], keys: s["x-kubernetes-list-map-keys"] || [] });
    for (const [k, v] of Object.entries(s.properties || {})) walk(v, path ? `${path}.${k}` : k, acc);
    if (s.items && typeof s.items === "object") walk(s.items, `${path}[*]`, acc);
    if (s.additionalProperties && typeof s.additionalProperties === "object") walk(s.additionalProperties, `${path}.*`, acc);
    for (const k of ["anyOf", "oneOf", "allOf"]) for (const x of s[k] || []) walk(x, path, acc);
  }
  for (const doc of loadDocs(file)) {
    if (doc?.kind !== "CustomResourceDefinition") continue;
    const kind = doc.spec.names.kind;
    if (!(kind in want)) continue;
    for (const v of doc.spec.versions || []) {
      if (v.name !== want[kind]) continue;
      const acc = { rules: [], lists: [] };
      walk(v.schema.openAPIV3Schema, "", acc);
      out[kind] = acc;
    }
  }
  return out;
}

async function main(argv) {
  const [cmd, ...args] = argv;
  let out;
  if (cmd === "validate") out = await cmdValidate(args);
  else if (cmd === "dump") out = args.flatMap((file) => loadDocs(file).map((doc, index) => ({ file, index, doc })));
  else if (cmd === "cel-table") out = CEL_CHECKS;
  else if (cmd === "crd-rules") out = crdRules(args[0]);
  else {
    process.stderr.write("usage: validate.mjs validate FILE... | dump FILE... | cel-table\n");
    return 2;
  }
  process.stdout.write(JSON.stringify(out, null, 1));
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e) => {
    process.stderr.write(`validate.mjs: ${e.stack || e}\n`);
    process.exit(1);
  },
);

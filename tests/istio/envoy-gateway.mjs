// Envoy Gateway's EnvoyExtensionPolicy and EnvoyProxy (gateway.envoyproxy.io/v1alpha1), as JSON
// Schemas for tests/istio/validate.mjs.
//
// Why written here: no package registry this project can use ships Envoy Gateway's CRD schemas
// (npm's @kubernetes-models has no Envoy Gateway package). These are written from Envoy
// Gateway's API reference (api/v1alpha1: envoyextensionpolicy, wasm, dynamic_module and
// envoyproxy types) for the fields meshbreaker's manifests use, strictly (a misspelled field is
// an error); the fields meshbreaker does not use (extProc, lua, EnvoyProxy's provider, logging,
// ...) are accepted without a closer look.

const str = { type: "string" };
const bool = { type: "boolean" };
const dns = { type: "string", minLength: 1, maxLength: 253, pattern: "^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$" };
const sha = { type: "string", pattern: "^[a-f0-9]{64}$" };

const targetRef = {
  type: "object",
  additionalProperties: false,
  required: ["group", "kind", "name"],
  properties: {
    group: { type: "string", maxLength: 253 },
    kind: { type: "string", minLength: 1, maxLength: 63 },
    name: { type: "string", minLength: 1, maxLength: 253 },
    sectionName: { type: "string", minLength: 1, maxLength: 253 },
  },
};

const secretRef = {
  type: "object",
  additionalProperties: false,
  required: ["name"],
  properties: { group: str, kind: str, name: str, namespace: str },
};

const tls = { type: "object", additionalProperties: false, required: ["caCertificateRef"], properties: { caCertificateRef: secretRef } };

const wasm = {
  type: "object",
  additionalProperties: false,
  required: ["code"],
  properties: {
    name: str,
    rootID: str,
    code: {
      type: "object",
      additionalProperties: false,
      required: ["type"],
      properties: {
        type: { enum: ["HTTP", "Image", "ConfigMap"] },
        http: {
          type: "object",
          additionalProperties: false,
          required: ["url"],
          properties: { url: { type: "string", pattern: "^https?://" }, sha256: sha, tls },
        },
        image: {
          type: "object",
          additionalProperties: false,
          required: ["url"],
          // registry/image:tag or registry/image@sha256:digest: no scheme.
          properties: { url: { type: "string", minLength: 1, pattern: "^[^:/]+(:[0-9]+)?/[^ ]+$" }, sha256: sha, pullSecretRef: secretRef, tls },
        },
        configMap: { type: "object" },
        pullPolicy: { enum: ["IfNotPresent", "Always"] },
      },
      // The discriminator names the source that is set.
      allOf: [
        { if: { properties: { type: { const: "Image" } } }, then: { required: ["image"] } },
        { if: { properties: { type: { const: "HTTP" } } }, then: { required: ["http"] } },
      ],
    },
    config: {},
    failOpen: bool,
    env: { type: "object", additionalProperties: false, properties: { hostKeys: { type: "array", items: str } } },
  },
};

const dynamicModule = {
  type: "object",
  additionalProperties: false,
  required: ["name"],
  properties: {
    name: dns,
    filterName: { type: "string", maxLength: 253 },
    config: {},
    terminalFilter: bool,
  },
};

const metadata = { type: "object", required: ["name"], properties: { name: dns, namespace: str } };

// A resource document: apiVersion, kind, metadata and the given spec, nothing else.
const resource = (spec) => ({
  type: "object",
  additionalProperties: false,
  required: ["apiVersion", "kind", "metadata", "spec"],
  properties: { apiVersion: str, kind: str, metadata, spec },
});

export const ENVOY_GATEWAY = {
  "gateway.envoyproxy.io/v1alpha1/EnvoyExtensionPolicy": resource({
    type: "object",
    additionalProperties: false,
    properties: {
      targetRef: targetRef,
      targetRefs: { type: "array", items: targetRef },
      targetSelectors: { type: "array" },
      mergeType: { enum: ["StrategicMerge", "JSONMerge"] },
      wasm: { type: "array", maxItems: 16, items: wasm },
      extProc: { type: "array", maxItems: 16 },
      lua: { type: "array", maxItems: 16 },
      dynamicModule: { type: "array", maxItems: 16, items: dynamicModule },
    },
  }),
  "gateway.envoyproxy.io/v1alpha1/EnvoyProxy": resource({
    type: "object",
    properties: {
      dynamicModules: {
        type: "array",
        items: {
          type: "object",
          additionalProperties: false,
          required: ["name", "source"],
          properties: {
            name: dns,
            source: {
              type: "object",
              additionalProperties: false,
              properties: {
                type: { enum: ["Local", "Remote"] },
                local: {
                  type: "object",
                  additionalProperties: false,
                  required: ["path"],
                  properties: { path: { type: "string", minLength: 1, maxLength: 4096, pattern: "^/" } },
                },
                remote: {
                  type: "object",
                  additionalProperties: false,
                  required: ["url", "sha256"],
                  properties: { url: { type: "string", pattern: "^https?://[^/?#]+(?:[/?#].*)?$" }, sha256: sha },
                },
              },
            },
            doNotClose: bool,
            loadGlobally: bool,
          },
        },
      },
    },
  }),
};

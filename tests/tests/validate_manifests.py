#!/usr/bin/env python3
"""Kubernetes-style validation of Istio custom resources, for tests/tests/manifests.rs.

Why this exists: CI has no Kubernetes API server, yet a manifest that the API server would
reject is a broken release. The API server checks a custom resource in two steps, and so does
this script:

1. The structural `openAPIV3Schema` of the CRD (types, enums, lengths, patterns, required
   fields, unknown fields), with JSON Schema via `python3-jsonschema`. Unknown fields are
   errors here (kubectl's default strict field validation), so a misspelled field is caught.
2. The `x-kubernetes-validations` CEL rules and `x-kubernetes-list-type` uniqueness. There is
   no CEL interpreter in Debian, so each rule *text* found in the CRD maps to a Python
   equivalent below; a rule this script does not know is reported as an error, never skipped.

Error texts follow the API server's wording (`spec.url in body should be at least 1 chars
long`), so Istio's own fixtures can be checked against the reason they state in `_err`.

Commands (JSON on stdout; exit 0 unless the input cannot be read):
  validate --crds CRDS FILE...  one record per YAML document:
                                {file, index, kind, name, has_crd, expected_error, errors}
                                (`_err`, Istio's fixture convention, is stripped and reported
                                as expected_error)
  dump FILE...                  every YAML document as JSON: [{file, index, doc}]
"""

import json
import re
import sys

try:
    import jsonschema
    import yaml
except ImportError as e:  # pragma: no cover - environment problem, reported to the Rust test
    sys.stderr.write(
        "validate_manifests.py needs the Debian packages python3-yaml and python3-jsonschema "
        f"(apt-get install python3-yaml python3-jsonschema): {e}\n"
    )
    sys.exit(3)


# ---------------------------------------------------------------------------------------------
# Go's net/url.ParseRequestURI, which CEL's isURL()/url() use in Kubernetes
# (k8s.io/apiserver/pkg/cel/library/urls.go). Enough of it to decide what Istio's url rule
# decides: scheme syntax, request-URI form, authority (userinfo, host characters, port) and
# percent-escapes.
# ---------------------------------------------------------------------------------------------

_HOST_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~!$&'()*+,;=:[]<>\"")
_USERINFO_OK = set(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._:~!$&'()*+,;=%@"
)
_HEX = set("0123456789abcdefABCDEF")


class _URLError(Exception):
    pass


def _check_escapes(s, host):
    i = 0
    while i < len(s):
        c = s[i]
        if c == "%":
            if i + 2 >= len(s) or s[i + 1] not in _HEX or s[i + 2] not in _HEX:
                raise _URLError("invalid URL escape")
            i += 3
            continue
        if host and ord(c) < 0x80 and c not in _HOST_OK:
            raise _URLError(f"invalid character {c!r} in host name")
        i += 1


def _get_scheme(raw):
    for i, c in enumerate(raw):
        if c.isascii() and c.isalpha():
            continue
        if c.isascii() and (c.isdigit() or c in "+-."):
            if i == 0:
                return "", raw
            continue
        if c == ":":
            if i == 0:
                raise _URLError("missing protocol scheme")
            return raw[:i], raw[i + 1 :]
        return "", raw
    return "", raw


def _parse_host(host):
    if host.startswith("["):
        end = host.rfind("]")
        if end < 0:
            raise _URLError("missing ']' in host")
        port = host[end + 1 :]
        if port and not re.fullmatch(r":[0-9]*", port):
            raise _URLError("invalid port after host")
        _check_escapes(host[1:end], host=False)
        return
    colon = host.rfind(":")
    if colon >= 0 and not re.fullmatch(r":[0-9]*", host[colon:]):
        raise _URLError("invalid port")
    _check_escapes(host, host=True)


def parse_request_uri(raw):
    """Returns the lower-cased scheme, or raises _URLError like Go's url.ParseRequestURI."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise _URLError("invalid control character in URL")
    if raw == "":
        raise _URLError("empty url")
    if raw == "*":
        return ""
    scheme, rest = _get_scheme(raw)
    scheme = scheme.lower()
    if rest.endswith("?") and rest.count("?") == 1:
        rest = rest[:-1]
    else:
        rest = rest.split("?", 1)[0]
    if not rest.startswith("/"):
        if scheme:
            return scheme  # opaque URL such as mailto:x
        raise _URLError("invalid URI for request")
    if (scheme or not rest.startswith("///")) and rest.startswith("//"):
        authority, slash, path = rest[2:].partition("/")
        rest = slash + path
        at = authority.rfind("@")
        if at >= 0:
            if any(c not in _USERINFO_OK for c in authority[:at] if c.isascii()):
                raise _URLError("invalid userinfo")
            _check_escapes(authority[:at], host=False)
        _parse_host(authority[at + 1 :])
    _check_escapes(rest, host=False)
    return scheme


def is_url(s):
    try:
        parse_request_uri(s)
        return True
    except _URLError:
        return False


def url_scheme(s):
    return parse_request_uri(s)


# ---------------------------------------------------------------------------------------------
# The CEL rules of the shipped CRDs, keyed by their exact text.
# ---------------------------------------------------------------------------------------------

_URL_SCHEMES = ["", "http", "https", "oci", "file"]


def _wasm_url_rule(v):
    if is_url(v):
        return url_scheme(v) in _URL_SCHEMES
    return is_url("http://" + v) and url_scheme("http://" + v) in _URL_SCHEMES


CEL_RULES = {
    'isURL(self) ? (url(self).getScheme() in ["", "http", "https", "oci", "file"]) : (isURL("http://" + self) &&\n'
    'url("http://" + self).getScheme() in ["", "http", "https", "oci", "file"])': _wasm_url_rule,
    '!self.contains("*")': lambda v: "*" not in v,
    'self.all(key, !key.contains("*"))': lambda v: all("*" not in k for k in v),
    "self.all(key, key.size() != 0)": lambda v: all(len(k) != 0 for k in v),
    "self.size() == 0": lambda v: len(v) == 0,
    '(has(self.valueFrom) ? self.valueFrom : "") != "HOST" || !has(self.value)': lambda v: (
        v.get("valueFrom", "") != "HOST" or "value" not in v
    ),
    "(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1": lambda v: (
        sum(1 for f in ("selector", "targetRef", "targetRefs") if f in v) <= 1
    ),
}


# ---------------------------------------------------------------------------------------------
# Structural schema -> JSON Schema
# ---------------------------------------------------------------------------------------------


def to_json_schema(s):
    """OpenAPI v3 structural schema -> JSON Schema draft 7 (nullable, strict unknown fields)."""
    if not isinstance(s, dict):
        return s
    out = {}
    for k, v in s.items():
        if k.startswith("x-kubernetes-") or k in ("description", "nullable", "format"):
            continue
        if k == "properties":
            out[k] = {name: to_json_schema(p) for name, p in v.items()}
        elif k in ("items", "additionalProperties", "not"):
            out[k] = to_json_schema(v) if isinstance(v, dict) else v
        elif k in ("anyOf", "allOf", "oneOf"):
            out[k] = [to_json_schema(x) for x in v]
        else:
            out[k] = v
    if s.get("format") == "int32" and s.get("type") == "integer":
        out.setdefault("minimum", -(2**31))
        out.setdefault("maximum", 2**31 - 1)
    if (
        s.get("type") == "object"
        and "properties" in s
        and "additionalProperties" not in s
        and not s.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if s.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def _path_str(parts):
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out


def _json_type(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def _k8s_message(err):
    """A jsonschema error in the API server's words."""
    path = _path_str(list(err.absolute_path))
    where = path or "<root>"
    v = err.validator
    if v == "required":
        missing = re.search(r"'([^']+)' is a required property", err.message)
        field = missing.group(1) if missing else "?"
        return f"{_path_str(list(err.absolute_path) + [field])}: Required value"
    if v == "type":
        want = err.validator_value
        if isinstance(want, list):
            want = want[0]
        return f'{where} in body must be of type {want}: "{_json_type(err.instance)}"'
    if v == "minLength":
        return f"{where} in body should be at least {err.validator_value} chars long"
    if v == "maxLength":
        return f"{where} in body should be at most {err.validator_value} chars long"
    if v == "pattern":
        return f"{where} in body should match '{err.validator_value}'"
    if v == "enum":
        allowed = ", ".join(f'"{x}"' for x in err.validator_value)
        return f'{where}: Unsupported value: "{err.instance}": supported values: {allowed}'
    if v == "minimum":
        return f"{where} in body should be greater than or equal to {err.validator_value}"
    if v == "maximum":
        return f"{where} in body should be less than or equal to {err.validator_value}"
    if v == "maxItems":
        return f"{where}: Too many: {len(err.instance)}: must have at most {err.validator_value} items"
    if v == "maxProperties":
        return f"{where}: Too many: must have at most {err.validator_value} items"
    if v == "additionalProperties" and err.validator_value is False:
        extra = re.findall(r"'([^']+)'", err.message)
        return f'{where}: unknown field "{extra[0] if extra else "?"}"'
    return f"{where}: {err.message}"


def _cel_and_lists(schema, value, path, errors):
    """Step 2: CEL rules and list-type uniqueness, walking value alongside its schema."""
    if not isinstance(schema, dict) or value is None:
        return
    for rule in schema.get("x-kubernetes-validations", []):
        text = rule.get("rule", "")
        check = CEL_RULES.get(text)
        where = _path_str(path) or "<root>"
        if check is None:
            errors.append(f"{where}: CEL rule not implemented by validate_manifests.py: {text!r}")
            continue
        try:
            ok = check(value)
        except (TypeError, AttributeError, _URLError) as e:
            ok = False
            errors.append(f"{where}: CEL rule {text!r} could not be evaluated: {e}")
            continue
        if not ok:
            errors.append(f"{where}: Invalid value: \"{_json_type(value)}\": {rule.get('message', text)}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for k, v in value.items():
            if k in props:
                _cel_and_lists(props[k], v, path + [k], errors)
            elif isinstance(extra, dict):
                _cel_and_lists(extra, v, path + [k], errors)
    elif isinstance(value, list):
        items = schema.get("items", {})
        list_type = schema.get("x-kubernetes-list-type")
        seen = {}
        for i, item in enumerate(value):
            _cel_and_lists(items, item, path + [i], errors)
            if list_type == "map" and isinstance(item, dict):
                keys = schema.get("x-kubernetes-list-map-keys", [])
                ident = json.dumps({k: item.get(k) for k in keys}, sort_keys=True)
            elif list_type == "set":
                ident = json.dumps(item, sort_keys=True)
            else:
                continue
            if ident in seen:
                errors.append(f"{_path_str(path + [i])}: Duplicate value: {ident}")
            seen[ident] = i


def load_crds(path):
    """(apiVersion, kind) -> openAPIV3Schema for every served version of every CRD."""
    crds = {}
    with open(path, encoding="utf-8") as f:
        for doc in yaml.safe_load_all(f):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for ver in spec.get("versions", []):
                schema = ver.get("schema", {}).get("openAPIV3Schema")
                if schema is not None:
                    crds[(f"{spec['group']}/{ver['name']}", spec["names"]["kind"])] = schema
    return crds


def validate_doc(doc, schema):
    errors = []
    if not isinstance(doc, dict):
        return ["<root> in body must be of type object"]
    body = dict(doc)
    meta = body.pop("metadata", None)
    body.pop("apiVersion", None)
    body.pop("kind", None)
    if not isinstance(meta, dict) or not meta.get("name"):
        errors.append("metadata.name: Required value")
    validator = jsonschema.Draft7Validator(to_json_schema(schema))
    for err in sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path))):
        errors.append(_k8s_message(err))
    _cel_and_lists(schema, body, [], errors)
    return errors


def _load_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def cmd_validate(args):
    if len(args) < 3 or args[0] != "--crds":
        sys.stderr.write("usage: validate_manifests.py validate --crds CRDS FILE...\n")
        return 2
    crds = load_crds(args[1])
    out = []
    for path in args[2:]:
        for i, doc in enumerate(_load_docs(path)):
            expected = doc.pop("_err", None) if isinstance(doc, dict) else None
            key = (doc.get("apiVersion"), doc.get("kind")) if isinstance(doc, dict) else (None, None)
            schema = crds.get(key)
            meta = doc.get("metadata") if isinstance(doc, dict) else None
            out.append(
                {
                    "file": path,
                    "index": i,
                    "kind": key[1],
                    "api_version": key[0],
                    "name": meta.get("name") if isinstance(meta, dict) else None,
                    "has_crd": schema is not None,
                    "expected_error": expected,
                    "errors": validate_doc(doc, schema) if schema is not None else [],
                }
            )
    json.dump(out, sys.stdout, indent=1)
    return 0


def cmd_dump(args):
    out = []
    for path in args:
        for i, doc in enumerate(_load_docs(path)):
            out.append({"file": path, "index": i, "doc": doc})
    json.dump(out, sys.stdout, indent=1)
    return 0


def main(argv):
    if len(argv) < 2:
        sys.stderr.write(__doc__)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "validate":
        return cmd_validate(args)
    if cmd == "dump":
        return cmd_dump(args)
    sys.stderr.write(f"unknown command {cmd!r}\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"use strict";
// A typed flow's input schema (JSON Schema as pydantic writes it) for the start form:
// a compact text of it, an example built from it, and a checker of the common subset
// (type, required, properties, additionalProperties, items, enum, const, anyOf/oneOf/
// allOf, minimum/maximum, lengths, pattern, format date-time/date/uuid, $ref to $defs).
// The checker follows the schema, so it may be stricter than pydantic's lax mode (which
// also takes "2" for an integer); the gateway's 422 has the last word.

const SCHEMA_DEPTH = 8;
function schemaRef(root, node) {
  let n = node, hops = 0;
  while (n && typeof n === "object" && typeof n.$ref === "string" && hops++ < 20) {
    const m = /^#\/(\$defs|definitions)\/(.+)$/.exec(n.$ref);
    const defs = m && root && root[m[1]];
    n = defs && typeof defs === "object" && m[2] in defs ? defs[m[2]] : {};
  }
  return n && typeof n === "object" ? n : {};
}
const refName = (node) => (node && typeof node.$ref === "string" ? node.$ref.split("/").pop() : null);
const typesOf = (node) => (Array.isArray(node.type) ? node.type : typeof node.type === "string" ? [node.type] : []);

// ---------- compact text: `{order_id: string<uuid>, lines: Line[]}` and `Line = {...}` ----------
function schemaText(root) {
  const named = new Map();  // def name -> its text, in order of first use
  const wanted = [];
  function txt(node, depth) {
    if (node === true || !node || typeof node !== "object" || !Object.keys(node).length) return "any";
    const name = refName(node);
    if (name) {
      if (!named.has(name)) { named.set(name, null); wanted.push(name); }
      return name;
    }
    if (depth > SCHEMA_DEPTH) return "…";
    const dflt = "default" in node ? " = " + JSON.stringify(node.default) : "";
    if ("const" in node) return JSON.stringify(node.const) + dflt;
    if (Array.isArray(node.enum)) return node.enum.map((v) => JSON.stringify(v)).join(" | ") + dflt;
    const alts = node.anyOf || node.oneOf;
    if (Array.isArray(alts)) return alts.map((a) => txt(a, depth + 1)).join(" | ") + dflt;
    if (Array.isArray(node.allOf)) return node.allOf.map((a) => txt(a, depth + 1)).join(" & ") + dflt;
    const ts = typesOf(node);
    const one = (t) => {
      if (t === "object") {
        const props = node.properties && typeof node.properties === "object" ? node.properties : {};
        const req = new Set(Array.isArray(node.required) ? node.required : []);
        const fields = Object.entries(props).map(([k, v]) => k + (req.has(k) ? "" : "?") + ": " + txt(v, depth + 1));
        const extra = node.additionalProperties;
        if (extra && typeof extra === "object") fields.push("[key]: " + txt(extra, depth + 1));
        return fields.length ? "{" + fields.join(", ") + "}" : "object";
      }
      if (t === "array") {
        const it = node.items ? txt(node.items, depth + 1) : "any";
        return (/[ |&]/.test(it) && !it.startsWith("{") ? "(" + it + ")" : it) + "[]" + bounds(node.minItems, node.maxItems, " items ");
      }
      if (t === "string") {
        return "string" + (node.format ? "<" + node.format + ">" : "") + bounds(node.minLength, node.maxLength, " len ") +
          (node.pattern ? " /" + node.pattern + "/" : "");
      }
      if (t === "integer" || t === "number") {
        const lo = node.minimum != null ? " ≥" + node.minimum : node.exclusiveMinimum != null ? " >" + node.exclusiveMinimum : "";
        const hi = node.maximum != null ? " ≤" + node.maximum : node.exclusiveMaximum != null ? " <" + node.exclusiveMaximum : "";
        return t + lo + hi;
      }
      return String(t);
    };
    return (ts.length ? ts.map(one).join(" | ") : "any") + dflt;
  }
  function bounds(lo, hi, what) {
    if (lo == null && hi == null) return "";
    return what + (lo != null ? lo : 0) + ".." + (hi != null ? hi : "");
  }
  const lines = [txt(root, 0)];
  const defs = root && root.$defs && typeof root.$defs === "object" ? root.$defs : {};
  for (let i = 0; i < wanted.length && i < 50; i++) {
    const name = wanted[i];
    lines.push(name + " = " + (name in defs ? txt(defs[name], 1) : "?"));
  }
  return lines.join("\n");
}

// ---------- an example: examples, default, const/enum, else a skeleton by type ----------
function schemaExample(root) {
  function ex(node, depth) {
    if (!node || typeof node !== "object") return null;
    if (depth > SCHEMA_DEPTH) return null;
    if (typeof node.$ref === "string") return ex(schemaRef(root, node), depth + 1);
    if (Array.isArray(node.examples) && node.examples.length) return node.examples[0];
    if ("example" in node) return node.example;
    if ("default" in node) return node.default;
    if ("const" in node) return node.const;
    if (Array.isArray(node.enum) && node.enum.length) return node.enum[0];
    const alts = node.anyOf || node.oneOf;
    if (Array.isArray(alts) && alts.length) {
      const pick = alts.find((a) => !(a && a.type === "null")) || alts[0];
      return ex(pick, depth + 1);
    }
    if (Array.isArray(node.allOf)) {
      const parts = node.allOf.map((a) => ex(a, depth + 1));
      return parts.every((p) => p && typeof p === "object" && !Array.isArray(p)) ? Object.assign({}, ...parts) : parts[0];
    }
    const t = typesOf(node).find((x) => x !== "null") || (node.properties ? "object" : null);
    if (t === "object") {
      const out = {}, props = node.properties && typeof node.properties === "object" ? node.properties : {};
      const req = Array.isArray(node.required) ? node.required : [];
      for (const k of (req.length ? req : Object.keys(props))) out[k] = ex(props[k] || {}, depth + 1);
      return out;
    }
    if (t === "array") {
      const n = Math.max(1, node.minItems || 0);
      return node.items && node.maxItems !== 0 ? Array.from({length: n}, () => ex(node.items, depth + 1)) : [];
    }
    if (t === "string") {
      const now = new Date();
      now.setMilliseconds(0);
      if (node.format === "date-time") return now.toISOString().replace(".000Z", "Z");
      if (node.format === "date") return now.toISOString().slice(0, 10);
      if (node.format === "uuid") {
        return (window.crypto && crypto.randomUUID) ? crypto.randomUUID() : "00000000-0000-4000-8000-000000000000";
      }
      return "x".repeat(Math.max(1, node.minLength || 0));
    }
    if (t === "integer" || t === "number") {
      let v = node.minimum != null ? node.minimum : node.exclusiveMinimum != null ? node.exclusiveMinimum + 1 : 0;
      if (node.maximum != null && v > node.maximum) v = node.maximum;
      return t === "integer" ? Math.ceil(v) : v;
    }
    if (t === "boolean") return false;
    return null;
  }
  return ex(root, 0);
}

// ---------- the checker: [{loc: "lines.0.qty", msg}] ----------
const FORMATS = {
  "date-time": /^\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d(:\d\d(\.\d+)?)?([Zz]|[+-]\d\d:?\d\d)?$/,
  "date": /^\d{4}-\d\d-\d\d$/,
  "uuid": /^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$/,
};
function jsonType(v) {
  if (v === null) return "null";
  if (Array.isArray(v)) return "array";
  if (typeof v === "number") return Number.isInteger(v) ? "integer" : "number";
  return typeof v;  // string, boolean, object
}
const sameJson = (a, b) => JSON.stringify(a) === JSON.stringify(b);
function schemaCheck(root, value) {
  const errs = [];
  function check(node, v, loc, out, depth) {
    if (node === true || !node || typeof node !== "object" || depth > 40) return;
    const bad = (msg) => out.push({loc: loc.join("."), msg});
    if (typeof node.$ref === "string") { check(schemaRef(root, node), v, loc, out, depth + 1); return; }
    if (Array.isArray(node.allOf)) for (const a of node.allOf) check(a, v, loc, out, depth + 1);
    const alts = node.anyOf || node.oneOf;
    if (Array.isArray(alts) && alts.length) {
      const tries = alts.map((a) => { const o = []; check(a, v, loc, o, depth + 1); return o; });
      if (!tries.some((o) => !o.length)) {
        const best = tries.reduce((a, b) => (b.length < a.length ? b : a));
        if (alts.length === 2 && alts.some((a) => a && a.type === "null")) out.push(...best);  // Optional[X]
        else bad("matches none of: " + alts.map((a) => schemaText(Object.assign({}, a, {$defs: root.$defs})).split("\n")[0]).join(" | "));
      }
    }
    if ("const" in node && !sameJson(node.const, v)) { bad("must be " + JSON.stringify(node.const)); return; }
    if (Array.isArray(node.enum) && !node.enum.some((e) => sameJson(e, v))) {
      bad("must be one of " + node.enum.map((e) => JSON.stringify(e)).join(", ")); return;
    }
    const ts = typesOf(node), jt = jsonType(v);
    if (ts.length && !ts.includes(jt) && !(jt === "integer" && ts.includes("number"))) {
      bad("must be " + ts.join(" or ") + ", got " + (jt === "integer" ? "number" : jt)); return;
    }
    if (jt === "string") {
      const n = [...v].length;
      if (node.minLength != null && n < node.minLength) bad("at least " + node.minLength + " characters");
      if (node.maxLength != null && n > node.maxLength) bad("at most " + node.maxLength + " characters");
      if (typeof node.pattern === "string") {
        let re = null;
        try { re = new RegExp(node.pattern, "u"); } catch (_) { /* a Python-only pattern: the server checks it */ }
        if (re && !re.test(v)) bad("must match " + node.pattern);
      }
      const fmt = FORMATS[node.format];
      if (fmt && !fmt.test(v)) bad("not a valid " + node.format);
    }
    if (jt === "integer" || jt === "number") {
      if (node.minimum != null && v < node.minimum) bad("must be ≥ " + node.minimum);
      if (node.maximum != null && v > node.maximum) bad("must be ≤ " + node.maximum);
      if (node.exclusiveMinimum != null && v <= node.exclusiveMinimum) bad("must be > " + node.exclusiveMinimum);
      if (node.exclusiveMaximum != null && v >= node.exclusiveMaximum) bad("must be < " + node.exclusiveMaximum);
    }
    if (jt === "array") {
      if (node.minItems != null && v.length < node.minItems) bad("at least " + node.minItems + " items");
      if (node.maxItems != null && v.length > node.maxItems) bad("at most " + node.maxItems + " items");
      const pre = Array.isArray(node.prefixItems) ? node.prefixItems : [];
      v.forEach((item, i) => {
        const s = i < pre.length ? pre[i] : node.items;
        if (s && typeof s === "object") check(s, item, loc.concat(String(i)), out, depth + 1);
      });
    }
    if (jt === "object") {
      const props = node.properties && typeof node.properties === "object" ? node.properties : {};
      for (const k of (Array.isArray(node.required) ? node.required : [])) {
        if (!(k in v)) out.push({loc: loc.concat(k).join("."), msg: "field required"});
      }
      for (const [k, item] of Object.entries(v)) {
        if (k in props) check(props[k], item, loc.concat(k), out, depth + 1);
        else if (node.additionalProperties === false) out.push({loc: loc.concat(k).join("."), msg: "unexpected field"});
        else if (node.additionalProperties && typeof node.additionalProperties === "object") {
          check(node.additionalProperties, item, loc.concat(k), out, depth + 1);
        }
      }
    }
  }
  check(root, value, [], errs, 0);
  return errs;
}

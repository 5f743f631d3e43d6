//! The OpenAPI description of the HTTP API and a self-contained docs page (no CDN: it
//! renders `/openapi.json` and has a form to try `/rerank`).

use serde_json::{json, Value};

pub fn openapi() -> Value {
    let error = json!({"$ref": "#/components/schemas/Error"});
    let errors = json!({
        "400": {"description": "Body is not a JSON object", "content": {"application/json": {"schema": error}}},
        "401": {"description": "Missing or wrong API key (when the server has one)", "content": {"application/json": {"schema": error}}},
        "413": {"description": "Body over --max-body-bytes", "content": {"application/json": {"schema": error}}},
        "422": {"description": "A field is missing, empty, of the wrong type or out of range (`error.param` names it); unknown `config`", "content": {"application/json": {"schema": error}}},
        "429": {"description": "Over capacity even at the cheapest configuration; `Retry-After` says when to retry", "content": {"application/json": {"schema": error}}},
        "504": {"description": "`deadline_ms` cannot be met even at the cheapest configuration (refused before any work)", "content": {"application/json": {"schema": error}}},
    });
    let ext = json!({
        "config": {"type": "string", "default": "auto", "description": "`auto` (best quality meeting the deadline or the server's SLO) or a configuration id to pin, e.g. `full`, `d4`, `d6-r4@2`, `full-int8`, `full-p64-int8` (passage cut to its first 64 tokens; see /configs)"},
        "deadline_ms": {"type": "number", "description": "This request's own latency budget; refused with 504 if it cannot be met"},
    });
    let mut tei_props = json!({
        "query": {"type": "string"},
        "texts": {"type": "array", "items": {"type": "string"}},
        "truncate": {"type": "boolean", "default": false, "description": "Cut documents that do not fit; false refuses them with 422"},
        "truncation_direction": {"type": "string", "enum": ["right", "left"], "default": "right"},
        "raw_scores": {"type": "boolean", "default": false, "description": "Raw logits instead of sigmoid scores in [0, 1]"},
        "return_text": {"type": "boolean", "default": false},
    });
    let mut cohere_props = json!({
        "model": {"type": "string"},
        "query": {"type": "string"},
        "documents": {"type": "array", "items": {"oneOf": [{"type": "string"}, {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}]}},
        "top_n": {"type": "integer", "minimum": 1},
        "return_documents": {"type": "boolean", "default": false},
        "max_tokens_per_doc": {"type": "integer", "minimum": 1},
    });
    for props in [&mut tei_props, &mut cohere_props] {
        for (k, v) in ext.as_object().expect("object") {
            props[k] = v.clone();
        }
    }
    let cohere_op = json!({
        "summary": "Re-rank documents (Cohere/Jina shape)",
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CohereRequest"}}}},
        "responses": merge(json!({"200": {"description": "Results sorted by relevance_score (sigmoid of the model's score, in [0, 1])", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CohereResponse"}}}}}), &errors),
    });
    json!({
        "openapi": "3.0.3",
        "info": {"title": "mrank", "version": env!("CARGO_PKG_VERSION"), "description": "Matryoshka re-ranking service: one model cut in depth and width at run time to hold a latency target. Scores of different configurations are not on one scale; one request is always scored by one configuration (header x-mrank-config)."},
        "paths": {
            "/rerank": {"post": {
                "summary": "Re-rank documents (TEI shape with `texts`, or Cohere/Jina shape with `documents`)",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"oneOf": [{"$ref": "#/components/schemas/TeiRequest"}, {"$ref": "#/components/schemas/CohereRequest"}]}}}},
                "responses": merge(json!({"200": {"description": "TEI shape: [{index, score, text?}] sorted by score; timing headers x-compute-time, x-queue-time, x-inference-time, x-tokenization-time (ms). Cohere shape: as /v2/rerank."}}), &errors),
            }},
            "/v1/rerank": {"post": cohere_op.clone()},
            "/v2/rerank": {"post": cohere_op},
            "/health": {"get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}},
            "/ready": {"get": {"summary": "Readiness (503 while starting or shutting down)", "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
            "/info": {"get": {"summary": "Model, family, configurations, limits, version", "responses": {"200": {"description": "info"}}}},
            "/configs": {"get": {"summary": "The manifest with live latency estimates, the current quality rung and queue", "responses": {"200": {"description": "configs"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (prefix mrank_)", "responses": {"200": {"description": "text exposition format"}}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "TeiRequest": {"type": "object", "required": ["query", "texts"], "properties": tei_props},
                "CohereRequest": {"type": "object", "required": ["query", "documents"], "properties": cohere_props},
                "CohereResponse": {"type": "object", "properties": {
                    "id": {"type": "string"}, "model": {"type": "string"},
                    "results": {"type": "array", "items": {"type": "object", "properties": {"index": {"type": "integer"}, "relevance_score": {"type": "number"}, "document": {"type": "object", "properties": {"text": {"type": "string"}}}}}},
                    "usage": {"type": "object", "properties": {"total_tokens": {"type": "integer"}}},
                    "meta": {"type": "object", "properties": {"config": {"type": "string"}, "queue_ms": {"type": "number"}, "inference_ms": {"type": "number"}}},
                }},
                "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                    "message": {"type": "string"}, "type": {"type": "string"}, "code": {"type": "string"}, "param": {"type": "string"}}}}},
            },
        },
    })
}

fn merge(mut a: Value, b: &Value) -> Value {
    for (k, v) in b.as_object().expect("object") {
        a[k] = v.clone();
    }
    a
}

pub const DOCS_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>mrank API</title>
<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}
code,pre,textarea{font-family:ui-monospace,monospace}pre{background:#f4f4f4;padding:.8rem;overflow:auto}
.route{border-top:1px solid #ddd;padding:.5rem 0}.m{font-weight:bold;display:inline-block;width:4rem}</style></head>
<body><h1>mrank API</h1><p id="desc"></p><div id="routes"></div>
<h2>Try <code>POST /rerank</code></h2>
<p>API key (if the server has one): <input id="key" size="30"></p>
<textarea id="body" rows="9" cols="90">{"query": "what is the capital of france", "documents": ["Paris is the capital of France.", "Berlin is in Germany.", "France borders Spain."], "top_n": 2, "return_documents": true, "config": "auto"}</textarea><br>
<button onclick="send()">Send</button><pre id="out"></pre>
<h2>OpenAPI</h2><p><a href="/openapi.json">/openapi.json</a></p>
<script>
fetch('/openapi.json').then(r=>r.json()).then(s=>{
  document.getElementById('desc').textContent=s.info.description;
  const box=document.getElementById('routes');
  for(const [p,ops] of Object.entries(s.paths)) for(const [m,op] of Object.entries(ops)){
    const d=document.createElement('div');d.className='route';
    d.innerHTML='<span class="m">'+m.toUpperCase()+'</span><code>'+p+'</code> — '+op.summary;
    const codes=Object.entries(op.responses).map(([c,r])=>c+': '+r.description).join('\n');
    const pre=document.createElement('pre');pre.textContent=codes;d.appendChild(pre);box.appendChild(d);}
});
async function send(){
  const h={'content-type':'application/json'};const k=document.getElementById('key').value;
  if(k)h['authorization']='Bearer '+k;
  const r=await fetch('/rerank',{method:'POST',headers:h,body:document.getElementById('body').value});
  const hs=['x-mrank-config','x-queue-time','x-inference-time'].map(n=>n+': '+r.headers.get(n)).join('\n');
  document.getElementById('out').textContent=r.status+'\n'+hs+'\n\n'+JSON.stringify(await r.json(),null,2);
}
</script></body></html>"#;

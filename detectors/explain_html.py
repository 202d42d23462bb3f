"""A self-contained HTML report of :func:`detectors.explain.explain` results.

One file, no external resources: the explanations are embedded as JSON and a short script draws
the token heat map, the feature table (with card excerpts) and the component chart, so the page
is what a browser makes of the data (the test renders it in headless Chromium and reads the DOM).
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any, Sequence

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:70em}
.item{border:1px solid #ccc;border-radius:6px;padding:1em;margin-bottom:1.5em}
.tok{white-space:pre-wrap;border-radius:2px;padding:0 1px}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:2px 6px;font-size:90%;text-align:left}
.bar{display:inline-block;height:.8em}.pos{background:#d9534f}.neg{background:#5b8dd9}
.flag{color:#b00;font-weight:bold}.approx{color:#a60}
"""

_SCRIPT = r"""
const data = JSON.parse(document.getElementById('coalign-data').textContent);
const root = document.getElementById('report');
function el(tag, attrs, text){const e=document.createElement(tag);for(const k in (attrs||{}))e.setAttribute(k,attrs[k]);if(text!==undefined)e.textContent=text;return e;}
function fmt(x){return (x>=0?'+':'')+x.toFixed(3);}
data.items.forEach(function(it){
  const box = el('div',{'class':'item','id':'item-'+it.item});
  box.appendChild(el('h2',{}, 'Item '+it.item+': score '+it.score.toFixed(3)+' (threshold '+it.threshold.toFixed(3)+')'));
  if(it.flagged) box.appendChild(el('p',{'class':'flag'},'FLAGGED'));
  if(it.approximate) box.appendChild(el('p',{'class':'approx'},'approximate: features of the nearest SAE ('+it.sae.hook+')'));
  const heat = el('p',{'class':'heatmap'});
  const m = Math.max(1e-9, ...it.tokens.map(t=>Math.abs(t[1]-it.threshold)));
  it.tokens.forEach(function(t){
    const a = Math.min(1, Math.abs(t[1]-it.threshold)/m), c = t[1]>it.threshold ? '217,83,79' : '91,141,217';
    const s = el('span',{'class':'tok','title':t[1].toFixed(3),'style':'background:rgba('+c+','+a.toFixed(2)+')'}, t[0]);
    heat.appendChild(s);
  });
  box.appendChild(el('h3',{},'Tokens')); box.appendChild(heat);
  box.appendChild(el('h3',{},'Features (SAE '+it.sae.name+', fingerprint '+it.sae.fingerprint+')'));
  box.appendChild(el('p',{'class':'error-share'}, 'error share '+(100*it.error_share).toFixed(1)+'% (error term '+fmt(it.error)+', bias '+fmt(it.bias)+', features '+fmt(it.features_total)+')'));
  const t = el('table',{'class':'features'}); const hr = el('tr');
  ['feature','attribution','share','mean act','card'].forEach(h=>hr.appendChild(el('th',{},h))); t.appendChild(hr);
  it.features.forEach(function(f){const r=el('tr',{'class':'feature-row'});
    [String(f.id),fmt(f.attribution),(100*f.share).toFixed(1)+'%',f.mean_act.toFixed(3),f.card].forEach(v=>r.appendChild(el('td',{},v)));t.appendChild(r);});
  box.appendChild(t);
  if(it.causal){box.appendChild(el('p',{'class':'causal'},'causal check: zeroing the top '+it.causal.k+' features moves the score '+fmt(-it.causal.drop_top)+'; '+it.causal.k+' random active features: '+fmt(-it.causal.drop_random)+' (mean of '+it.causal.n_random+')'));}
  if(it.components.length){
    box.appendChild(el('h3',{},'Components (direct attribution)'));
    const ct = el('table',{'class':'components'}); const mx = Math.max(1e-9, ...it.components.map(c=>Math.abs(c.attribution)));
    it.components.forEach(function(c){const r=el('tr',{'class':'component-row'}); r.appendChild(el('td',{},c.component)); r.appendChild(el('td',{},fmt(c.attribution)));
      const td=el('td'); td.appendChild(el('span',{'class':'bar '+(c.attribution>=0?'pos':'neg'),'style':'width:'+(200*Math.abs(c.attribution)/mx).toFixed(0)+'px'})); r.appendChild(td); ct.appendChild(r);});
    box.appendChild(ct);
  }
  root.appendChild(box);
});
document.getElementById('status').textContent = 'rendered ' + data.items.length + ' item(s)';
"""


def render_html(explanations: Sequence[dict[str, Any]], title: str = "coalign explain") -> str:
    """The report as one HTML string (data embedded as JSON; ``</`` escaped so text cannot end the script)."""
    payload = json.dumps({"items": list(explanations)}, ensure_ascii=False).replace("</", "<\\/")
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1><p id='status'>not rendered (needs JavaScript)</p><div id='report'></div>"
        f"<script type='application/json' id='coalign-data'>{payload}</script><script>{_SCRIPT}</script></body></html>"
    )


def write_html(path: str | os.PathLike, explanations: Sequence[dict[str, Any]], title: str = "coalign explain") -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(render_html(explanations, title), encoding="utf-8")
    os.replace(tmp, p)
    return p

"""The seed table of results/face_pairwise/results.md from the committed results.json files:
``python results/face_pairwise/summarise.py``."""
import json
import sys
from pathlib import Path
R = str(Path(__file__).resolve().parents[1]) + '/'
def load(p): return json.load(open(p))
def counts(res, sets, mode):
    rows=[r for r in res['rows'] if r['set'] in sets]
    return sum(r['pred'][mode]==r['label'] for r in rows), len(rows)
def ptrue(res, sets, mode):
    rows=[r for r in res['rows'] if r['set'] in sets]
    L=res['labels']; return sum(r['probs'][mode][L.index(r['label'])] for r in rows)/len(rows)
ship=load(R+'av_clips/results.json')
def v(k,s): return load(R+f'face_pairwise/aligned_{k}'+('' if s==0 else f'_s{s}')+'/results.json')
RA,CR,SA=('RAVDESS actor 01',),('CREMA-D 1001',),('sample',)
lines=[]
def row(name, getters):
    # getters: list per seed of list of (res, sets) for composite
    cells=[]
    for mode in ('face','fused'):
        per=[]; ps=[]
        for parts in getters:
            c=sum(counts(res,sets,mode)[0] for res,sets in parts); n=sum(counts(res,sets,mode)[1] for res,sets in parts)
            p=sum(ptrue(res,sets,mode)*counts(res,sets,mode)[1] for res,sets in parts)/n
            per.append(c); ps.append(p)
        cells.append(" / ".join(map(str,per))+f" of {n} (p {sum(ps)/len(ps):.2f})")
    lines.append(f"| {name} | "+" | ".join(cells)+" |")
seeds=[0,1,2]
for label, sets in (('13 labelled clips',RA+CR),('RAVDESS actor 01 (7)',RA),('CREMA-D 1001 (6)',CR),('sample, 6 segments',SA)):
    row(f"shipped (mapping head, fer frozen) — {label}", [[(ship,sets)]])
    row(f"aligned on all 14 recordings — {label}", [[(v('all',s),sets)] for s in seeds])
comp=lambda s: [(v('cremad',s),RA),(v('ravdess',s),CR)]
row("held out: RAVDESS rows aligned on CREMA-D + sample, CREMA-D rows aligned on RAVDESS — 13 labelled clips", [comp(s) for s in seeds])
row("held out: aligned on CREMA-D + sample — RAVDESS actor 01 (7)", [[(v('cremad',s),RA)] for s in seeds])
row("held out: aligned on RAVDESS — CREMA-D 1001 (6)", [[(v('ravdess',s),CR)] for s in seeds])
row("held out: aligned on RAVDESS — sample, 6 segments", [[(v('ravdess',s),SA)] for s in seeds])
print("| bundle — clips | face, seeds 0 / 1 / 2 | fused, seeds 0 / 1 / 2 |\n|---|---:|---:|")
print("\n".join(lines))

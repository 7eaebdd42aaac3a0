"""Diagnostic: inner cross-validated UA of audio feature variants on one RAVDESS fold's 16
training actors (speaker-grouped 4-fold CV; the fold's test actors are never read), for the
random-init audio TCN and a pretrained checkpoint (docs/RESULTS.md, "What was tried").

    python -m training.eval.feature_diagnostic --fold 5 --checkpoint runs/sweep/base_fold5

Variants: the encoder's features (head of the mean-pooled TCN output); mean+std pooling of the
TCN output; each standardised per speaker (label-free, transductive: uses a speaker's own
unlabelled clips); log-mel statistics (the floor's features) for reference.
"""
import argparse

import numpy as np
import torch

from edge_mer.config import load_config
from training.eval.protocol import RavdessFold, random_encoders
from training.datasets import load_cache_store, load_action_unit_vectors, actor_of
from training.checkpoint import load_encoders
from training.cache import open_cache
from training.data.ravdess import EMOTIONS
from training.eval.probe import _standardiser, _logistic
from sklearn.model_selection import GroupKFold
from sklearn.metrics import balanced_accuracy_score

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("--fold", type=int, default=5)
p.add_argument("--checkpoint", required=True)
p.add_argument("--config", default="configs/ravdess_protocol.toml")
p.add_argument("--cache", default="cache/ravdess_audio")
p.add_argument("--au-csv", default="../shared/data/ravdess/openface_au/au_audio_per_clip.csv")
args = p.parse_args()
torch.set_num_threads(2)
cfg = load_config([args.config], [])
cache = args.cache
store, ids = load_cache_store(cache, ("audio",))
ids = [i for i in ids if i.startswith("ravdess/") and 1 <= actor_of(i) <= 20]
store.vectors["au"] = load_action_unit_vectors(args.au_csv, ids)
ids = [i for i in ids if i in store.vectors["au"]]
labels = open_cache(cache).labels()
fold = RavdessFold(args.fold, store, [i for i in ids if i in labels], labels, list(EMOTIONS))
tr = fold.train_ids; y = fold.y_train; g = fold.groups
def feats(enc, ids):
    out_f, out_ms = [], []
    with torch.no_grad():
        for i in ids:
            x = torch.from_numpy(store.logmels[i])[None]
            m = enc
            mean = x.mean(dim=(1, 2), keepdim=True); std = (x - mean).pow(2).mean(dim=(1, 2), keepdim=True).add(1e-5).sqrt()
            h = m.blocks(m.stem_norm(m.stem((x - mean) / std)))
            out_f.append(m.head(h.mean(2))[0].numpy()); out_ms.append(torch.cat([h.mean(2), h.std(2)], 1)[0].numpy())
    return np.stack(out_f), np.stack(out_ms)
def spk_norm(x, ids):
    x = x.copy(); a = np.array([actor_of(i) for i in ids])
    for s in set(a):
        k = a == s; x[k] = (x[k] - x[k].mean(0)) / (x[k].std(0) + 1e-6)
    return x
def cv(x, cs=(0.01, 0.1, 1.0)):
    mean, scale = _standardiser(x); xs = (x - mean) / scale
    folds = list(GroupKFold(4).split(xs, y, g))
    return {c: round(100 * float(np.mean([balanced_accuracy_score(y[te], _logistic(xs[tr_], y[tr_], c, 300).predict(xs[te])) for tr_, te in folds])), 1) for c in cs}
rand = random_encoders(cfg, ("audio",))["audio"].eval()
pair = load_encoders(args.checkpoint)["audio"]
stats = np.stack([np.concatenate([store.logmels[i].mean(1), store.logmels[i].std(1)]) for i in tr])
print("stats", cv(stats), "spknorm", cv(spk_norm(stats, tr)), flush=True)
for name, enc in (("random", rand), ("pair", pair)):
    f, ms = feats(enc, tr)
    print(name, "feat", cv(f), "meanstd", cv(ms), "feat+spknorm", cv(spk_norm(f, tr)), "meanstd+spknorm", cv(spk_norm(ms, tr)), flush=True)

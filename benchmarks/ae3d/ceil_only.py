"""Stage 1 only of `brainsynth train PAIRS --dim 3d --preset tiny --seed 12 --set ...`, with the project's
own trainer (VolumeTrainer.train_vae), then vae_reconstruction and the snapped-box ceiling of ceiling3.py.
usage: ae.py NAME [KEY=VALUE ...]   (KEY=VALUE as --set)"""
import json, sys, time
from pathlib import Path
import numpy as np, torch
torch.set_num_threads(1)
from brainsynth_cli.interfaces import TrainOptions
from brainsynth_cli.images import read_labels, read_volume
from brainsynth_cli.plugin_manager import registry
from brainsynth_cli.structures import default_rules
from brainsynth_plugins.ip2p import volume_nets as vn
from brainsynth_plugins.ip2p import volume_training as vt
from brainsynth_plugins.training_core.runtime import deterministic_on_cpu

name, sets = sys.argv[1], dict(a.split("=", 1) for a in sys.argv[2:] if a != "--true")
WANT_TRUE = "--true" in sys.argv
out = Path("/tmp/ae3d/ceil_only_unused")
opts = TrainOptions(data=Path("/tmp/p3d/pairs3d"), output=out, seed=12, device="cpu", extra={"preset": "tiny", "set": sets})
cfg = vt.build_config(opts)
pairs = vt.read_volume_pairs(cfg["data"])
tr = vt.VolumeTrainer(cfg, out, pairs, device="cpu", progress=lambda d, t, m="": None)
tr.check(); tr.load_volumes()
print(name, "cfg vae", cfg["vae"], "steps", cfg["vae_steps"], "lr", cfg["vae_lr"], "kl", cfg["kl_weight"], "sched", cfg["lr_scheduler"], flush=True)
res = {"name": name, "sets": sets, "vae": cfg["vae"], "vae_steps": cfg["vae_steps"]}
vae = vn.nets.load(vn.DIM, "vae", Path(sys.argv[1])).eval(); t = time.time()
res["vae_reconstruction"] = tr.vae_reconstruction(vae)
# ceiling (ceiling3.py, snapped box): sub-002 (train split, the pair ceiling3.py used) and sub-005 (validation split, held out)
grid, voxel_mm = tuple(cfg["grid"]), float(cfg["voxel_mm"])
rules = default_rules(); seg = registry("segmenter").create("atlas")
res["ceiling"] = {}
for pname in ("sub-002/ses-01_to_ses-02", "sub-005/ses-01_to_ses-02"):
    pair = Path("/tmp/p3d/pairs3d/pairs") / pname
    prior, prior_lab = read_volume(pair / "prior.nii.gz"), read_labels(pair / "prior_dseg.nii.gz")
    def vol(v):
        lab = np.asarray(seg.segment_followup(v, prior, prior_lab).data); return float(np.isin(lab, rules["ventricle"].labels).sum())
    ts = time.time(); v0 = vol(prior); res["seg_s"] = round(time.time() - ts, 1)
    P = np.asarray(prior.data, np.float32); L = np.asarray(prior_lab.data)
    box = vn.place(P, L, prior.voxel_size, grid, voxel_mm)
    c = np.asarray(box.centre); half = (np.asarray(box.grid) - 1) / 2
    b = vn.Box(tuple(np.round(c - half) + half), box.spacing, box.shape, box.grid, box.voxel_mm)
    seen_p = np.clip(b.to_model(P), 0, 1)
    with torch.no_grad():
        zp = vn.volume_conditioning(vae, torch.from_numpy(seen_p)[None, None] * 2 - 1); dp = vn.decode(vae, zp).float()
        for sev in ("mild", "moderate", "severe"):
            T = np.asarray(read_volume(pair / f"def-ventricle-{sev}.nii.gz").data, np.float32)
            seen_t = np.clip(b.to_model(T), 0, 1)
            zt = vn.volume_conditioning(vae, torch.from_numpy(seen_t)[None, None] * 2 - 1)
            change = ((vn.decode(vae, zt).float() - dp) / 2)[0, 0].numpy()
            r = {"vae": round((vol(prior.with_data((P + b.to_volume(change)).astype(np.float32))) - v0) / v0 * 100, 2)}
            if "sub-005" in pname and WANT_TRUE:
                r["target"] = round((vol(read_volume(pair / f"def-ventricle-{sev}.nii.gz")) - v0) / v0 * 100, 2)
                r["grid"] = round((vol(prior.with_data((P + b.to_volume(seen_t - seen_p)).astype(np.float32))) - v0) / v0 * 100, 2)
            res["ceiling"][f"{pname.split('/')[0]} {sev}"] = r
            print(pname, sev, r, flush=True)
res["total_s"] = round(time.time() - t, 1)
print("RESULT", json.dumps(res), flush=True)
with open("/tmp/ae3d/results_ceil_only.jsonl", "a") as f:
    f.write(json.dumps(res) + "\n")

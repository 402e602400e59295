import time, sys, torch, torch.nn.functional as F
torch.set_num_threads(1)
from brainsynth_plugins.ip2p import volume_nets as vn
base = {"channels": [8, 16], "num_res_blocks": 1, "latent_channels": 3, "norm_num_groups": 8, "attention_levels": [False, False], "nonlocal_attention": False}
cands = {"8-16 lat3": {}, "8-16 lat8": {"latent_channels": 8}, "16-32 lat4": {"channels": [16, 32], "latent_channels": 4},
         "f1 8 lat4": {"channels": [8], "attention_levels": [False], "latent_channels": 4},
         "f1 16 lat4": {"channels": [16], "attention_levels": [False], "latent_channels": 4}}
x = torch.rand(2, 1, 48, 56, 48) * 2 - 1
for name, o in cands.items():
    vae = vn.build_vae({**base, **o}); opt = torch.optim.AdamW(vae.parameters(), 1e-3)
    ts = []
    for i in range(3):
        t = time.time()
        mean, std = vn.nets.encode(vae, vn.DIM, x); rec = vn.decode(vae, mean + std * torch.randn_like(mean))
        loss = F.l1_loss(rec, x); loss.backward(); opt.step(); opt.zero_grad()
        ts.append(time.time() - t)
    print(name, "params", sum(p.numel() for p in vae.parameters()), "latent", tuple(mean.shape), "s/step", [round(t, 2) for t in ts], flush=True)

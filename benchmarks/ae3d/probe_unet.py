import time, torch
torch.set_num_threads(1)
from brainsynth_plugins.ip2p import volume_nets as vn
u = {"channels": [16, 32, 64], "attention_levels": [False, False, True], "num_res_blocks": 1, "num_head_channels": 16, "norm_num_groups": 8, "pooled_text": True}
for lat, shape, uo in ((3, (24, 28, 24), {}), (4, (48, 56, 48), {}), (4, (48, 56, 48), {"channels": [8, 16, 32, 64], "attention_levels": [False, False, False, True]})):
    unet = vn.build_unet({**u, **uo}, lat, 384); opt = torch.optim.AdamW(unet.parameters(), 1e-3)
    ts = []
    for i in range(3):
        t = time.time()
        noisy = torch.randn(4, lat, *shape); prior = torch.randn(4, lat, *shape); text = torch.randn(4, 8, 384)
        out = vn.unet_forward(unet, noisy, prior, torch.randint(0, 1000, (4,)), text)
        out.float().pow(2).mean().backward(); opt.step(); opt.zero_grad(); ts.append(time.time() - t)
    print(lat, shape, uo, "s/step", [round(t, 2) for t in ts], flush=True)

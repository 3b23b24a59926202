"""``nandoctor.diagnose`` on an FSDP2 model inside a torchrun script: the user's sharded model is untouched.

Each rank prints one JSON line on stdout: whether ``plain_replica`` gives plain modules and tensors
that compute what the sharded model computes (with the user's hook, not FSDP's); the verdict and
the wrappers the report names; whether every parameter is still a DTensor with the same local
shard and placements, every module the same class and hooks; and whether the model still trains
as FSDP2 afterwards (one step that changes its shards).
"""

import json

import torch
import torch.distributed as dist

import nandoctor
from nandoctor.distributed import plain_replica
from tests.specs.ranks import ce, fsdp2_conv


def looks(model):
    params = {n: (type(p).__name__, p.to_local().clone(), tuple(p.placements)) for n, p in model.named_parameters()}
    modules = {
        n: (type(m).__name__, len(m._forward_pre_hooks), len(m._forward_hooks)) for n, m in model.named_modules()
    }
    return params, modules, model.training


dist.init_process_group("gloo")
spec = fsdp2_conv()
model = spec["model"]
calls = []
model.head.register_forward_hook(lambda module, args, output: calls.append(1))  # the user's own hook
replica = plain_replica(model)
x = spec["data"][0][0]
same_output = torch.allclose(replica(x), model(x), atol=1e-6)
kinds = {type(m).__name__ for m in replica.modules()} | {type(p).__name__ for p in replica.parameters()}
hooks = [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in replica.modules()]
replica_plain = same_output and not any(k.startswith("FSDP") or k == "DTensor" for k in kinds) and len(calls) == 2
replica_plain = replica_plain and hooks == [(0, 0)] * (len(hooks) - 1) + [(0, 1)]  # the head's, last
before = looks(model)
report = nandoctor.diagnose(spec, progress=False)
after = looks(model)
unchanged = (
    before[1:] == after[1:]
    and before[0].keys() == after[0].keys()
    and all(
        b[0] == a[0] == "DTensor" and b[2] == a[2] and torch.equal(b[1], a[1])
        for b, a in zip(before[0].values(), after[0].values())
    )
)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
loss = ce(model, spec["data"][0])
loss.backward()
optimizer.step()
trained = all(type(p).__name__ == "DTensor" for p in model.parameters()) and any(
    not torch.equal(p.to_local(), b[1]) for p, b in zip(model.parameters(), before[0].values())
)
distributed = report.to_dict()["probes"].get("distributed", {})
line = {"rank": dist.get_rank(), "verdict": report.verdict, "unchanged": unchanged, "trained": trained}
line["replica_plain"] = replica_plain
print(json.dumps({**line, "wrappers": distributed.get("wrappers"), "fsdp2": distributed.get("fsdp2")}), flush=True)
dist.destroy_process_group()

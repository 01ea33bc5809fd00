"""Run by torchrun in test_train.py: trains, then writes a checksum of this rank's weights."""

import sys
from pathlib import Path

import torch

from lfm_policy.train import TrainConfig, Trainer

config = TrainConfig.from_json(sys.argv[1])
trainer = Trainer(config, progress=False)
trainer.run()
rank = torch.distributed.get_rank()
total = sum(float(p.double().sum()) for p in trainer.policy.parameters())
Path(config.out_dir, f"checksum_rank{rank}.txt").write_text(repr(total))
torch.distributed.destroy_process_group()

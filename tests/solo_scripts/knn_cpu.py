"""A CPU stand-in for solo-learn's ``main_knn.py`` (which moves batches to CUDA): the same
argparse options and the same model loading (``args.json`` + ``METHODS[method]
.load_from_checkpoint(..., strict=False, cfg=cfg)``), then solo-learn's own
``WeightedKNNClassifier`` on CPU features. Prints one JSON line. Run through the runner:

    python -m cueco_plugin.solo tests/solo_scripts/knn_cpu.py --pretrained_checkpoint_dir RUN ...
"""

import json
import os
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf
from solo.args.knn import parse_args_knn
from solo.data.classification_dataloader import prepare_dataloaders, prepare_datasets
from solo.methods import METHODS
from solo.utils.knn import WeightedKNNClassifier
from torchvision import transforms


@torch.no_grad()
def features(loader, model):
    out = [(model(im)["feats"], lab) for im, lab in loader]
    return torch.cat([f for f, _ in out]), torch.cat([lab for _, lab in out])


def main():
    args = parse_args_knn()
    ckpt_dir = Path(args.pretrained_checkpoint_dir)
    ckpt_path = [ckpt_dir / ckpt for ckpt in os.listdir(ckpt_dir) if ckpt.endswith(".ckpt")][0]
    method_args = json.loads((ckpt_dir / "args.json").read_text())
    cfg = OmegaConf.create(method_args)
    model = METHODS[method_args["method"]].load_from_checkpoint(ckpt_path, strict=False, cfg=cfg)
    model.eval()
    T = transforms.ToTensor()
    train_dataset, val_dataset = prepare_datasets(
        args.dataset,
        T_train=T,
        T_val=T,
        train_data_path=args.train_data_path,
        val_data_path=args.val_data_path,
        data_format=args.data_format,
    )
    train_loader, val_loader = prepare_dataloaders(
        train_dataset, val_dataset, batch_size=args.batch_size, num_workers=args.num_workers
    )
    train_x, train_y = features(train_loader, model)
    val_x, val_y = features(val_loader, model)
    knn = WeightedKNNClassifier(k=args.k[0], T=args.temperature[0], distance_fx="cosine")
    knn(train_features=train_x, train_targets=train_y, test_features=val_x, test_targets=val_y)
    acc1, acc5 = knn.compute()
    record = {
        "argv": sys.argv,
        "model": type(model).__name__,
        "bank_seeded": bool(model.bank.seeded),
        "acc1": float(acc1),
        "val_images": len(val_y),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()

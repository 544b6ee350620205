from .trainer import Trainer, build_optimizer, build_train_loader

__all__ = ["Trainer", "build_optimizer", "build_train_loader"]

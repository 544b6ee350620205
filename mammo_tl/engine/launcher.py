"""setup(), main() and the command line behind tools/train_net.py (also ``python -m mammo_tl.engine.launcher``,
which is how mammo_tl's own experiment runners start trainings)."""
import sys

from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import get_mammo_tl_cfg
from ..data.datasets.common import DatasetError, register_json_datasets
from ..evaluation.operating_points import OperatingPointError
from .checkpoint import WeightsError, load_model_weights
from .preflight import ConfigError, check_output_dir, preflight
from .trainer import Trainer, operating_points_of


def setup(args):
    cfg = get_mammo_tl_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if cfg.SOLVER.AMP.ENABLED and not cfg.MODEL.DEVICE.startswith("cuda"):
        raise ValueError(f"SOLVER.AMP.ENABLED needs a GPU (detectron2's AMPTrainer), but MODEL.DEVICE is "
                         f"{cfg.MODEL.DEVICE!r}: set SOLVER.AMP.ENABLED False on CPU")
    cfg.freeze()
    register_json_datasets(cfg.DATASETS.REGISTER_JSON)
    check_output_dir(cfg.OUTPUT_DIR)  # before default_setup, which writes its log and config there
    default_setup(cfg, args)
    # mammo_tl's own messages (preflight, weights, best checkpoint) into OUTPUT_DIR/log.txt too
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="mammo_tl")
    return cfg


def main(args):
    cfg = setup(args)
    preflight(cfg, eval_only=args.eval_only)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        load_model_weights(model, cfg, purpose="evaluate", resume=args.resume)
        points = operating_points_of(cfg)
        res = Trainer.test(cfg, model, [Trainer.build_evaluator(cfg, name, operating_points=points)
                                        for name in cfg.DATASETS.TEST])
        verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def cli(argv=None, prog="train_net.py"):
    """detectron2's training command line (--config-file, --num-gpus, --resume, --eval-only, KEY VALUE ...);
    a config or data error ends the process with its message instead of a traceback."""
    args = default_argument_parser().parse_args(argv)
    try:
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
    except (ConfigError, DatasetError, WeightsError, OperatingPointError) as e:
        sys.exit(f"{prog}: {e}")


if __name__ == "__main__":
    cli(prog="python -m mammo_tl.engine.launcher")

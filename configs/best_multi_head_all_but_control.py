"""Four heads, the last step: configs/best_multi_head_refit.py trained on train, val and test,
every image but control's (1.125x the refit's; the recipe fixed beforehand, nothing chosen on them).

  python run_train.py --config=configs/best_multi_head_all_but_control.py --workdir=runs/mh_all
  python run_eval.py --workdirs=runs/mh_all --output_dir=eval/mh_all --config.tta=flip \
      --config.checkpoint=latest --config.subsets=control
Control is the one subset it holds out: no recipe can be compared or chosen with it (bench/sweep.py
refuses to score it on val or test). Result on control (docs/results.md, "Everything but
control", 3 seeds, 2-core Intel Xeon, AVX-512, flip TTA): subCategory 96.67% +- 0.07 (4,071 /
4,066 / 4,066 of 4,208), masterCategory 99.18% +- 0.04, gender 93.39% +- 0.23, articleType top 20
93.93% +- 0.25; best_multi_head_refit.py: 96.45 / 99.10 / 93.09 / 93.57. 936 +- 11 s of training.
masterCategory read from the consistent hierarchy decoding (heads.md; `consistent_masterCategory`
of --predict and load_classifier): 99.33% for each seed (4,180 of 4,208; docs/results.md,
"masterCategory read from the hierarchy's decoding"), McNemar p <= 1e-9 against the study-like
Model 1 + Model 2 ensemble (98.34%).
"""

from configs import best_multi_head_refit


def get_config():
    config = best_multi_head_refit.get_config()
    config.data.train_subsets = ("train", "val", "test")
    return config

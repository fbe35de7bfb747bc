"""Shared base configuration; every file in `configs/` states only what differs from it.

Configs are data (an `ml_collections.ConfigDict`), never code paths: the trainer reads fields,
the dataset config selects a registered dataset, the model name selects a DiT size.
"""

from __future__ import annotations

import ml_collections

VALID_METHODS = ('ddpm', 'diti', 'pdae', 'sdae', 'simclr', 'simsiam')
EVALUATE_STAGE = 'evaluate'
VALID_SCHEDULES = ('linear', 'cosine')
VALID_DTYPES = ('float32', 'bfloat16', 'float16')


def base_config() -> ml_collections.ConfigDict:
  """Returns the defaults every config starts from (paper-scale optimiser, small model)."""
  config = ml_collections.ConfigDict()
  config.name = 'base'
  config.method = 'ddpm'
  config.seed = 0
  # Stages run in order by `python -m jdiffrep.main`, each in <workdir>/<stage>: method names
  # and 'evaluate'. Empty: train `config.method` directly in <workdir>.
  config.pipeline = ()
  # Per-stage changes to this config, as flattened field paths: {'ddpm': {'num_train_steps': 5}}.
  config.stage_overrides = ml_collections.ConfigDict()

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = 'shapes'
  config.dataset.resolution = 32
  config.dataset.data_dir = ml_collections.config_dict.placeholder(str)  # None: $TFDS_DATA_DIR or ~/tensorflow_datasets
  # TFDS builder config, e.g. '32_small' for shapes; None: derived from the resolution.
  config.dataset.tfds_config = ml_collections.config_dict.placeholder(str)
  config.dataset.random_flip = True
  config.dataset.read_threads = 4
  config.dataset.prefetch_batches = 4

  config.model = ml_collections.ConfigDict()
  config.model.name = 'XS/4'  # DiT size / patch, see jdiffrep.models.dit.DIT_SIZES
  config.model.dtype = 'float32'  # activations; parameters are always float32
  # 'auto' (cpu_fused or head_major on CPU, XLA elsewhere), 'xla', 'cudnn' (GPU), 'head_major',
  # 'cpu_fused' (C++ kernel, float32, CPU): models/attention.py
  config.model.attention_impl = 'auto'

  config.diffusion = ml_collections.ConfigDict()
  config.diffusion.schedule = 'linear'
  config.diffusion.num_timesteps = 1000
  config.diffusion.beta_start = 1e-4
  config.diffusion.beta_end = 0.02
  # What the DiT outputs: 'eps' (DDPM/DiT, the paper setting) or 'v' (Salimans & Ho; easier
  # for small pixel-space DiTs, whose eps error at t ~ T is amplified by 1/sqrt(abar_t)).
  config.diffusion.prediction = 'eps'

  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rate = 1e-4
  config.optim.warmup_steps = 0
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.weight_decay = 0.0
  config.optim.grad_clip_norm = 0.0  # 0 disables clipping
  config.optim.ema_decay = 0.9999

  config.batch_size = 128  # global, over all devices and processes
  config.num_train_steps = 100_000

  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  config.sample_every_steps = 5000  # 0 disables intermediate sample grids; a final grid is always written

  config.sample = ml_collections.ConfigDict()
  config.sample.num_images = 64
  config.sample.ddim_steps = 50
  config.sample.eta = 0.0
  # Clamp the predicted x0 to [-1, 1] at every DDIM step, in sampling and in inversion alike (the
  # official DiTi / PDAE samplers do); reconstructions and counterfactuals use it too.
  config.sample.clip_x0 = True
  # DDIM inversion evaluates eps at the time-step of the level it reaches ('target': sampling
  # with the same steps then undoes it exactly for an x-independent eps) or of the level it leaves
  # ('source': the official DiTi / PDAE encoders).
  config.sample.invert_eps_at = 'target'

  # DiTi / PDAE (SPEC section 3); PDAE uses one subset and ignores the partition fields.
  config.diti = ml_collections.ConfigDict()
  config.diti.latent_dim = 512
  config.diti.num_subsets = 64
  config.diti.stage_boundaries = ml_collections.config_dict.placeholder(tuple)  # e.g. (50, ..., 1000)
  config.diti.stage_dims = ml_collections.config_dict.placeholder(tuple)  # dims per stage
  config.diti.gradient_mode = 'base'  # or 'stop_grad' (the paper's "balanced" setting)
  config.diti.encoder = 'conv'  # or 'vit'
  # The conv encoder's one attention block follows the stage of this output side: 16 is the
  # official place at 64x64 (after the 2nd stride-2 stage); 8 is the same place at 32x32.
  config.diti.encoder_attention_resolution = 16
  # The conv encoder's stage widths (one stride-2 stage each) and its attention heads: the
  # official CelebA-64 encoder; FFHQ and Bedroom (128x128) use (64, 128, 256, 256, 256).
  config.diti.encoder_channels = (64, 128, 128, 128)
  config.diti.encoder_num_heads = 4
  config.diti.branch_depth = -1  # -1: half the DM's depth
  config.diti.condition_mode = 'add'  # or 'modulate' (z modulates around the time modulation)
  # gamma of the loss weight w_t = snr^gamma / (1 + snr) on the eps MSE: 0.1 is PDAE's and DiTi's.
  # Lower values move weight to late (noisy) steps; -1 weighs the x0 error by 1 / (1 + snr).
  config.diti.loss_weight_gamma = 0.1
  # The coefficient of the branch's G when sampling and inverting: 'training' the s_t it was
  # trained with, 'official' -sqrt(1 - abar_t) as the official samplers (equal at large t).
  config.diti.sampling_shift = 'training'
  config.diti.dm_workdir = ml_collections.config_dict.placeholder(str)  # None: <workdir>/ddpm

  # Self-conditional DiT embeddings (SPEC section 4); every (choice) of the spec is a field.
  config.sdae = ml_collections.ConfigDict()
  config.sdae.latent_dim = 256  # d of z_t
  config.sdae.encoder_depth = -1  # DiT blocks in E(x, t); -1: half the denoiser's depth
  config.sdae.encoder_input = 'x_t'  # 'x_t' (embedding on the Markov chain) or 'x_0'
  config.sdae.normalize = True  # L2-normalise z_t ("directional vectors")
  # 'uniform': MSE on diffusion.prediction's target at uniform t (the paper's loss). 'pdae': the
  # eps MSE weighted by PDAE's snr^0.1 / (1 + snr), as DiTi trains: on the x0 error that is 2.5
  # to 0.9 up to t = 150 and falls fast after, where 'uniform' on an x0 target weighs every t
  # alike.
  config.sdae.loss_weight = 'uniform'
  config.sdae.consistency_weight = 0.0  # lambda of 1 - cos(z_t, sg(z_t')); 0 disables it
  config.sdae.consistency_max_gap = 10  # |t - t'| <= this
  # 'scratch': encoder and denoiser both start from random init (the paper's reading). 'dm': the
  # denoiser starts from a trained DM's EMA params (same config.model and diffusion.prediction),
  # so the encoder's gradient is, from step 0, what the DM cannot read from x_t.
  config.sdae.denoiser_init = 'scratch'
  config.sdae.dm_workdir = ml_collections.config_dict.placeholder(str)  # None: <workdir>/ddpm

  # The self-supervised baselines of the DiTi paper on DiTi's encoder (config.diti's kind,
  # widths and latent_dim), with the official settings (`config/celeba64/simclr.yml`,
  # `simsiam.yml`): loss = loss_weight x the SSL loss; the encoder trains with config.optim, the
  # head with SGD (momentum, weight decay, cosine to head_final_lr_fraction of its rate).
  # head_learning_rate is the official lr x (batch per GPU) / 32 at one GPU: SimCLR's SSL batch
  # 512 at 1e-3, SimSiam's 128 at 1e-4.
  config.simclr = _ssl_section(head_learning_rate=1e-3 * 512 / 32, jitter=(0.8, 0.8, 0.8, 0.2))
  config.simclr.temperature = 0.5
  config.simclr.projection_dim = 256
  config.simsiam = _ssl_section(head_learning_rate=1e-4 * 128 / 32, jitter=(0.4, 0.4, 0.4, 0.1))
  config.simsiam.bottleneck_dim = 128  # the predictor's hidden width
  config.simsiam.out_dim = -1  # projector output; -1: latent_dim (official out_dim = latent_dim)

  # Every method that learns an embedding (DiTi, PDAE, sdae, SimCLR, SimSiam) logs its health to
  # TensorBoard at each log step: per-dimension std of the L2-normalised embedding (mean, min;
  # 1/sqrt(d) when spread evenly, 0 when collapsed) and its effective rank, on the first
  # `health_images` images of the eval split (`jdiffrep/health.py`). 0 turns it off.
  config.health_images = 256

  # The 'evaluate' pipeline stage (SPEC section 5).
  config.evaluate = ml_collections.ConfigDict()
  config.evaluate.batch_size = 256  # feature extraction
  config.evaluate.probe_epochs = 15
  # Standardise features with the train statistics before the linear probes (folded into the
  # probe, so its capacity is the same): one learning rate fits features of any scale. The
  # official DiTi probe trains on raw z (paper_scale_pipeline turns this off).
  config.evaluate.probe_standardize = True
  # Train the linear probes on randomly flipped training images, as the official DiTi probe does
  # (on features: those of the mirrored train images are extracted too, and each epoch takes
  # one of an example's two views at random). Not for datasets whose labels a flip changes.
  config.evaluate.probe_train_flip = False
  # Images of each split that the evaluation encodes (the first ones, in record order).
  config.evaluate.train_limit = ml_collections.config_dict.placeholder(int)  # None: whole split
  config.evaluate.eval_limit = ml_collections.config_dict.placeholder(int)  # validation and test
  # Features of the three splits kept in memory, in all; past this the largest sets are spilled
  # to raw float32 files in `feature_dir` (local disk) and the probes stream them a chunk of
  # `probe_chunk_mb` at a time, so memory does not grow with the dataset (CelebA's pixels: 8 GB).
  config.evaluate.feature_memory_mb = 1024
  config.evaluate.probe_chunk_mb = 256
  config.evaluate.feature_dir = ml_collections.config_dict.placeholder(str)  # None: system temp
  config.evaluate.reconstruction_images = 32
  config.evaluate.counterfactual_pairs = 64  # test pairs (A, B) for DiTi counterfactuals
  # The swapped group of z is lerp(z_A, z_B, alpha); x_T is slerp(x_T^A, x_T^B, noise_alpha).
  # (1, 0) swaps B's values in and keeps A's own noise; the official interpolation moves both.
  config.evaluate.counterfactual_alpha = 1.0
  config.evaluate.counterfactual_noise_alpha = 0.0
  # DDIM steps of the counterfactuals' inversion and generation; None: config.sample.ddim_steps.
  # The official evaluation inverts with 1000 and generates with 100.
  config.evaluate.counterfactual_invert_steps = ml_collections.config_dict.placeholder(int)
  config.evaluate.counterfactual_generate_steps = ml_collections.config_dict.placeholder(int)
  # The CNN that reads counterfactuals: on shapes 1.1.0 it reads shape at 0.984 from 8000
  # images (0.968 from 4000), every other attribute at >= 0.994.
  config.evaluate.classifier_train_images = 8000
  config.evaluate.classifier_steps = 2000
  # Time-steps at which sdae's z_t and the DM's mid-block features (the DDAE baseline, whenever
  # 'ddpm' is in the pipeline) are probed; () leaves that stage's features out.
  config.evaluate.embedding_timesteps = (0, 10, 25, 50, 100, 200, 400)
  config.evaluate.dm_feature_timesteps = (0, 10, 25, 50, 100, 200, 400)
  config.evaluate.knn_k = 20
  # One more row per encoder architecture of the trained stages (DiTi's and the SSL baselines'
  # conv encoder, sdae's DiT encoder), at random initialisation (seed config.seed): what training
  # added over the architecture alone.
  config.evaluate.random_encoder_baselines = True
  # The evaluators the stage runs (jdiffrep/evaluate/evaluators/): each entry names its `type`
  # and options; `enabled=False` leaves one out. An evaluator that lacks what it needs
  # (attributes, labels, a stage with time-step subsets) is skipped with the reason.
  config.evaluate.evals = ml_collections.ConfigDict({
      'attribute_probe': {'type': 'attribute_probe', 'enabled': True},
      'categorical_probe': {'type': 'categorical_probe', 'enabled': True},
      'accuracy_vs_t': {'type': 'accuracy_vs_t', 'enabled': True},
      'reconstruction': {'type': 'reconstruction', 'enabled': True},
      'timestep_probe': {'type': 'timestep_probe', 'enabled': True, 'stage': 'diti'},
      'counterfactual': {'type': 'counterfactual', 'enabled': True, 'stage': 'diti'},
      # DiTi's transfer test: regress LFW's 73 attribute scores from every representation (the
      # official `attribute_regression.py`: linear, MSE, Adam 1e-3, batch 64, 15 epochs). LFW is
      # read at config.dataset.resolution from config.dataset.data_dir unless `data_dir` is set;
      # prepare it with `python -m jdiffrep.prepare --dataset=lfw --source=DIR`.
      'attribute_regression': {'type': 'attribute_regression', 'enabled': False,
                               'dataset': 'lfw', 'data_dir': None, 'epochs': 15,
                               'batch_size': 64, 'learning_rate': 1e-3},
  })

  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1  # -1: all devices not used by the other axes
  config.mesh.fsdp = 1
  # Arrays with at least this many elements are split over 'fsdp' (largest divisible axis);
  # smaller ones (biases, norms) are replicated. See jdiffrep/sharding.py:fsdp_spec.
  config.mesh.fsdp_min_size = 2 ** 16
  return config


def _ssl_section(*, head_learning_rate: float, jitter) -> ml_collections.ConfigDict:
  """The fields SimCLR and SimSiam share (`jdiffrep.methods.ssl`, `jdiffrep.augment`)."""
  section = ml_collections.ConfigDict()
  section.loss_weight = 0.01  # the official ssl_weight
  section.hidden_dim = -1  # the head's hidden width; -1: latent_dim (official)
  section.head_learning_rate = head_learning_rate
  section.head_momentum = 0.9
  section.head_weight_decay = 1e-6
  section.head_final_lr_fraction = 0.1
  brightness, contrast, saturation, hue = jitter
  # Each view: flip, colour jitter (in random order), grayscale, Gaussian blur of kernel
  # size // 20 * 2 + 1, with these probabilities; a flip is off where it changes the labels.
  section.augment = ml_collections.ConfigDict({
      'flip_prob': 0.5, 'jitter_prob': 0.8, 'brightness': brightness, 'contrast': contrast,
      'saturation': saturation, 'hue': hue, 'grayscale_prob': 0.2, 'blur_prob': 0.5,
      'blur_sigma': (0.1, 2.0)})
  return section


def paper_scale_pipeline(config: ml_collections.ConfigDict, *, num_train_steps: int,
                         representation_steps: int) -> None:
  """Both papers on a real dataset, evaluated as the official DiTi code does (in place).

  Stages ddpm, diti, pdae, sdae, simclr, simsiam, evaluate; the representation stages train
  `representation_steps` (SimCLR at the official SSL batch of 512), the DM `num_train_steps`.
  Counterfactuals invert with 1000 DDIM steps, generate with 100 and move x_T by the same slerp
  as z (`eval/counterfactual_generation.py`); DDIM uses the official shift -sqrt(1 - abar_t) and
  inverts with eps of the level it leaves (`model/diffusion/ddim.py`); the linear probes train on
  raw features of randomly flipped training images (`eval/multitask_classification.py`).
  """
  config.num_train_steps = num_train_steps
  config.pipeline = ('ddpm', 'diti', 'pdae', 'sdae', 'simclr', 'simsiam', 'evaluate')
  config.stage_overrides = {name: {'num_train_steps': representation_steps}
                            for name in ('diti', 'pdae', 'sdae', 'simclr', 'simsiam')}
  config.stage_overrides.simclr.batch_size = 512  # the official ssl_batch_size
  config.evaluate.counterfactual_invert_steps = 1000
  config.evaluate.counterfactual_generate_steps = 100
  config.evaluate.counterfactual_alpha = 1.0
  config.evaluate.counterfactual_noise_alpha = 1.0
  config.evaluate.probe_standardize = False
  config.evaluate.probe_train_flip = True
  config.sample.invert_eps_at = 'source'
  config.diti.sampling_shift = 'official'


def split_pipeline(pipeline) -> tuple[str, ...]:
  """`config.pipeline` as a tuple of stage names.

  On the command line `--config.pipeline=ddpm,sdae,evaluate` reaches the config as the one
  string 'ddpm,sdae,evaluate' (ml_collections parses a tuple only from `('ddpm','sdae')`), so
  entries are split at commas: both spellings name the same stages.
  """
  if isinstance(pipeline, str):
    pipeline = (pipeline,)
  return tuple(stage.strip() for entry in pipeline for stage in entry.split(',') if stage.strip())


def _check_choice(path: str, value, valid) -> None:
  if value not in valid:
    raise ValueError(f'config.{path}={value!r} is not valid; choose one of {list(valid)}.')


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the bad field and its valid values, before anything is built."""
  from jdiffrep.data import registry  # pylint: disable=g-import-not-at-top
  from jdiffrep.models import attention  # pylint: disable=g-import-not-at-top
  from jdiffrep.models import dit  # pylint: disable=g-import-not-at-top

  _check_choice('method', config.method, VALID_METHODS)
  for stage in config.pipeline:
    _check_choice('pipeline stage', stage, VALID_METHODS + (EVALUATE_STAGE,))
  for stage in config.stage_overrides:
    _check_choice('stage_overrides key', stage, VALID_METHODS + (EVALUATE_STAGE,))
  _check_choice('dataset.name', config.dataset.name, sorted(registry.DATASETS))
  _check_choice('diffusion.schedule', config.diffusion.schedule, VALID_SCHEDULES)
  _check_choice('diffusion.prediction', config.diffusion.prediction, ('eps', 'v', 'x0'))
  _check_choice('sample.invert_eps_at', config.sample.invert_eps_at, ('target', 'source'))
  _check_choice('diti.sampling_shift', config.diti.sampling_shift, ('training', 'official'))
  _check_choice('model.dtype', config.model.dtype, VALID_DTYPES)
  _check_choice('model.attention_impl', config.model.attention_impl, attention.ATTENTION_IMPLS)
  dit.parse_model_name(config.model.name)
  for field in ('batch_size', 'num_train_steps', 'log_every_steps', 'checkpoint_every_steps',
                'keep_checkpoints', 'diffusion.num_timesteps', 'sample.num_images',
                'sample.ddim_steps'):
    value = config
    for part in field.split('.'):
      value = value[part]
    if not isinstance(value, int) or value < 1:
      raise ValueError(f'config.{field}={value!r} must be a positive integer.')
  if not 0.0 <= config.optim.ema_decay < 1.0:
    raise ValueError(f'config.optim.ema_decay={config.optim.ema_decay} must be in [0, 1).')
  if config.sample.ddim_steps > config.diffusion.num_timesteps:
    raise ValueError('config.sample.ddim_steps must not exceed config.diffusion.num_timesteps.')
  for field in ('train_limit', 'eval_limit'):
    value = config.evaluate[field]
    if value is not None and (not isinstance(value, int) or value < 1):
      raise ValueError(f'config.evaluate.{field}={value!r} must be a positive integer or None '
                       '(None: the whole split).')
  for field in ('feature_memory_mb', 'probe_chunk_mb'):
    value = config.evaluate[field]
    if not isinstance(value, int) or value < (0 if field == 'feature_memory_mb' else 1):
      raise ValueError(f'config.evaluate.{field}={value!r} must be a '
                       f'{"non-negative" if field == "feature_memory_mb" else "positive"} '
                       'integer (MiB).')
  feature_dir = config.evaluate.feature_dir
  if feature_dir and '://' in feature_dir:
    raise ValueError(f'config.evaluate.feature_dir={feature_dir!r} must be a local directory: '
                     'the evaluation re-reads its spill files at random offsets. Leave it unset '
                     'for the system temp dir.')
  from jdiffrep.evaluate import evaluators  # pylint: disable=g-import-not-at-top
  for name, entry in config.evaluate.evals.items():
    evaluators.check_entry(name, entry)
  spec = registry.get_spec(config.dataset.name)
  if config.evaluate.probe_train_flip and not spec.flip_preserves_labels:
    raise ValueError(f'config.evaluate.probe_train_flip=True, but a horizontal flip changes the '
                     f'labels of {spec.name!r} (e.g. position left/right); set it to False.')
  for method in ('simclr', 'simsiam'):
    uses = config.method == method or method in config.pipeline
    if uses and config[method].augment.flip_prob > 0 and not spec.flip_preserves_labels:
      raise ValueError(f'config.{method}.augment.flip_prob={config[method].augment.flip_prob}, '
                       f'but a horizontal flip changes the labels of {spec.name!r}: the '
                       'embedding would learn to ignore them. Set it to 0.')
  for field in ('counterfactual_alpha', 'counterfactual_noise_alpha'):
    if not 0.0 <= config.evaluate[field] <= 1.0:
      raise ValueError(f'config.evaluate.{field}={config.evaluate[field]} must be in [0, 1] '
                       '(0 keeps A, 1 takes B).')


def stage_config(config: ml_collections.ConfigDict, stage: str) -> ml_collections.ConfigDict:
  """The config of one pipeline stage: `method = stage` plus `config.stage_overrides[stage]`."""
  result = config.copy_and_resolve_references()
  with result.unlocked():
    result.method = stage if stage != EVALUATE_STAGE else config.method
    result.pipeline = ()
    result.stage_overrides = ml_collections.ConfigDict()
  if stage in config.stage_overrides:
    overrides = _flatten(config.stage_overrides[stage].to_dict())
    try:
      result.update_from_flattened_dict(overrides)
    except (KeyError, AttributeError) as error:
      raise ValueError(f'config.stage_overrides.{stage} names a field that does not exist: '
                       f'{error}') from error
  return result


def _flatten(tree: dict, prefix: str = '') -> dict:
  """{'optim': {'learning_rate': 1}} -> {'optim.learning_rate': 1}."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat

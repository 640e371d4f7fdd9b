from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_KIND_TRAIN: _ClassVar[TaskKind]
    TASK_KIND_EVALUATE: _ClassVar[TaskKind]

class RunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATE_UNSPECIFIED: _ClassVar[RunState]
    RUN_STATE_IDLE: _ClassVar[RunState]
    RUN_STATE_RUNNING: _ClassVar[RunState]
    RUN_STATE_COMPLETED: _ClassVar[RunState]
    RUN_STATE_STOPPED: _ClassVar[RunState]
    RUN_STATE_FAILED: _ClassVar[RunState]
    RUN_STATE_PAUSED: _ClassVar[RunState]

class RoundPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUND_PHASE_UNSPECIFIED: _ClassVar[RoundPhase]
    ROUND_PHASE_WAITING_FOR_SILOS: _ClassVar[RoundPhase]
    ROUND_PHASE_TRAINING: _ClassVar[RoundPhase]
    ROUND_PHASE_AGGREGATING: _ClassVar[RoundPhase]
    ROUND_PHASE_CHECKPOINTING: _ClassVar[RoundPhase]
TASK_KIND_TRAIN: TaskKind
TASK_KIND_EVALUATE: TaskKind
RUN_STATE_UNSPECIFIED: RunState
RUN_STATE_IDLE: RunState
RUN_STATE_RUNNING: RunState
RUN_STATE_COMPLETED: RunState
RUN_STATE_STOPPED: RunState
RUN_STATE_FAILED: RunState
RUN_STATE_PAUSED: RunState
ROUND_PHASE_UNSPECIFIED: RoundPhase
ROUND_PHASE_WAITING_FOR_SILOS: RoundPhase
ROUND_PHASE_TRAINING: RoundPhase
ROUND_PHASE_AGGREGATING: RoundPhase
ROUND_PHASE_CHECKPOINTING: RoundPhase

class TensorSpec(_message.Message):
    __slots__ = ("name", "shape", "dtype")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ...) -> None: ...

class PayloadHeader(_message.Message):
    __slots__ = ("total_bytes", "sha256", "crc32")
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    total_bytes: int
    sha256: str
    crc32: int
    def __init__(self, total_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., crc32: _Optional[int] = ...) -> None: ...

class PayloadChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: PayloadHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[PayloadHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("agent_version", "base_model_fingerprint", "base_model_config_json", "lora_config_json", "adapter_layout", "num_train_samples", "num_test_samples", "agent_instance", "base_model_weights_fingerprint")
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    LORA_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_LAYOUT_FIELD_NUMBER: _ClassVar[int]
    NUM_TRAIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    NUM_TEST_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    AGENT_INSTANCE_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_WEIGHTS_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    agent_version: str
    base_model_fingerprint: str
    base_model_config_json: str
    lora_config_json: str
    adapter_layout: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    num_train_samples: int
    num_test_samples: int
    agent_instance: str
    base_model_weights_fingerprint: str
    def __init__(self, agent_version: _Optional[str] = ..., base_model_fingerprint: _Optional[str] = ..., base_model_config_json: _Optional[str] = ..., lora_config_json: _Optional[str] = ..., adapter_layout: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., num_train_samples: _Optional[int] = ..., num_test_samples: _Optional[int] = ..., agent_instance: _Optional[str] = ..., base_model_weights_fingerprint: _Optional[str] = ...) -> None: ...

class JoinResponse(_message.Message):
    __slots__ = ("silo_id", "session_id", "heartbeat_interval_s")
    SILO_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    silo_id: str
    session_id: str
    heartbeat_interval_s: int
    def __init__(self, silo_id: _Optional[str] = ..., session_id: _Optional[str] = ..., heartbeat_interval_s: _Optional[int] = ...) -> None: ...

class TaskStreamRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class TrainingPlan(_message.Message):
    __slots__ = ("learning_rate", "local_epochs", "batch_size", "seed", "proximal_mu", "gamma_max", "mask_skip_layers", "prompt_variant", "control_variates", "wire_dtype", "local_optimizer")
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PROXIMAL_MU_FIELD_NUMBER: _ClassVar[int]
    GAMMA_MAX_FIELD_NUMBER: _ClassVar[int]
    MASK_SKIP_LAYERS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_VARIANT_FIELD_NUMBER: _ClassVar[int]
    CONTROL_VARIATES_FIELD_NUMBER: _ClassVar[int]
    WIRE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    learning_rate: float
    local_epochs: int
    batch_size: int
    seed: int
    proximal_mu: float
    gamma_max: float
    mask_skip_layers: int
    prompt_variant: str
    control_variates: bool
    wire_dtype: str
    local_optimizer: str
    def __init__(self, learning_rate: _Optional[float] = ..., local_epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., seed: _Optional[int] = ..., proximal_mu: _Optional[float] = ..., gamma_max: _Optional[float] = ..., mask_skip_layers: _Optional[int] = ..., prompt_variant: _Optional[str] = ..., control_variates: _Optional[bool] = ..., wire_dtype: _Optional[str] = ..., local_optimizer: _Optional[str] = ...) -> None: ...

class RoundTask(_message.Message):
    __slots__ = ("run_id", "round", "task_id", "training", "adapter", "kind", "confirmed_task_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CONFIRMED_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    task_id: str
    training: TrainingPlan
    adapter: PayloadHeader
    kind: TaskKind
    confirmed_task_id: str
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., task_id: _Optional[str] = ..., training: _Optional[_Union[TrainingPlan, _Mapping]] = ..., adapter: _Optional[_Union[PayloadHeader, _Mapping]] = ..., kind: _Optional[_Union[TaskKind, str]] = ..., confirmed_task_id: _Optional[str] = ...) -> None: ...

class EvaluationReport(_message.Message):
    __slots__ = ("task_id", "num_samples", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    num_samples: int
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, task_id: _Optional[str] = ..., num_samples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class EvaluationReceipt(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class UpdateHeader(_message.Message):
    __slots__ = ("task_id", "num_samples", "mean_loss", "steps", "payload", "gamma")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MEAN_LOSS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    GAMMA_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    num_samples: int
    mean_loss: float
    steps: int
    payload: PayloadHeader
    gamma: float
    def __init__(self, task_id: _Optional[str] = ..., num_samples: _Optional[int] = ..., mean_loss: _Optional[float] = ..., steps: _Optional[int] = ..., payload: _Optional[_Union[PayloadHeader, _Mapping]] = ..., gamma: _Optional[float] = ...) -> None: ...

class PayloadTrailer(_message.Message):
    __slots__ = ("sha256", "crc32")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    crc32: int
    def __init__(self, sha256: _Optional[str] = ..., crc32: _Optional[int] = ...) -> None: ...

class UpdateChunk(_message.Message):
    __slots__ = ("header", "data", "trailer")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    header: UpdateHeader
    data: bytes
    trailer: PayloadTrailer
    def __init__(self, header: _Optional[_Union[UpdateHeader, _Mapping]] = ..., data: _Optional[bytes] = ..., trailer: _Optional[_Union[PayloadTrailer, _Mapping]] = ...) -> None: ...

class UploadReceipt(_message.Message):
    __slots__ = ("task_id", "bytes_received")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    bytes_received: int
    def __init__(self, task_id: _Optional[str] = ..., bytes_received: _Optional[int] = ...) -> None: ...

class FailureReport(_message.Message):
    __slots__ = ("task_id", "reason", "detail")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    reason: str
    detail: str
    def __init__(self, task_id: _Optional[str] = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class FailureReceipt(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("session_id", "state")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    state: str
    def __init__(self, session_id: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("session_known",)
    SESSION_KNOWN_FIELD_NUMBER: _ClassVar[int]
    session_known: bool
    def __init__(self, session_known: _Optional[bool] = ...) -> None: ...

class RunSpec(_message.Message):
    __slots__ = ("rounds", "silos_per_round", "min_silos", "round_deadline_s", "seed", "learning_rate", "local_epochs", "batch_size", "strategy", "eta", "tau", "beta1", "beta2", "momentum", "proximal_mu", "gamma_max", "mask_skip_layers", "prompt_variant", "lr_schedule", "eval_every", "max_samples_per_silo", "max_weight_share", "aggregator", "trim_fraction", "byzantine_silos", "multi_krum_keep", "clip_norm", "clip_median_factor", "wire_dtype", "wait_timeout_s", "local_optimizer")
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    SILOS_PER_ROUND_FIELD_NUMBER: _ClassVar[int]
    MIN_SILOS_FIELD_NUMBER: _ClassVar[int]
    ROUND_DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    TAU_FIELD_NUMBER: _ClassVar[int]
    BETA1_FIELD_NUMBER: _ClassVar[int]
    BETA2_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    PROXIMAL_MU_FIELD_NUMBER: _ClassVar[int]
    GAMMA_MAX_FIELD_NUMBER: _ClassVar[int]
    MASK_SKIP_LAYERS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_VARIANT_FIELD_NUMBER: _ClassVar[int]
    LR_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    EVAL_EVERY_FIELD_NUMBER: _ClassVar[int]
    MAX_SAMPLES_PER_SILO_FIELD_NUMBER: _ClassVar[int]
    MAX_WEIGHT_SHARE_FIELD_NUMBER: _ClassVar[int]
    AGGREGATOR_FIELD_NUMBER: _ClassVar[int]
    TRIM_FRACTION_FIELD_NUMBER: _ClassVar[int]
    BYZANTINE_SILOS_FIELD_NUMBER: _ClassVar[int]
    MULTI_KRUM_KEEP_FIELD_NUMBER: _ClassVar[int]
    CLIP_NORM_FIELD_NUMBER: _ClassVar[int]
    CLIP_MEDIAN_FACTOR_FIELD_NUMBER: _ClassVar[int]
    WIRE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    WAIT_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    LOCAL_OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    rounds: int
    silos_per_round: int
    min_silos: int
    round_deadline_s: float
    seed: int
    learning_rate: float
    local_epochs: int
    batch_size: int
    strategy: str
    eta: float
    tau: float
    beta1: float
    beta2: float
    momentum: float
    proximal_mu: float
    gamma_max: float
    mask_skip_layers: int
    prompt_variant: str
    lr_schedule: str
    eval_every: int
    max_samples_per_silo: int
    max_weight_share: float
    aggregator: str
    trim_fraction: float
    byzantine_silos: int
    multi_krum_keep: int
    clip_norm: float
    clip_median_factor: float
    wire_dtype: str
    wait_timeout_s: float
    local_optimizer: str
    def __init__(self, rounds: _Optional[int] = ..., silos_per_round: _Optional[int] = ..., min_silos: _Optional[int] = ..., round_deadline_s: _Optional[float] = ..., seed: _Optional[int] = ..., learning_rate: _Optional[float] = ..., local_epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., strategy: _Optional[str] = ..., eta: _Optional[float] = ..., tau: _Optional[float] = ..., beta1: _Optional[float] = ..., beta2: _Optional[float] = ..., momentum: _Optional[float] = ..., proximal_mu: _Optional[float] = ..., gamma_max: _Optional[float] = ..., mask_skip_layers: _Optional[int] = ..., prompt_variant: _Optional[str] = ..., lr_schedule: _Optional[str] = ..., eval_every: _Optional[int] = ..., max_samples_per_silo: _Optional[int] = ..., max_weight_share: _Optional[float] = ..., aggregator: _Optional[str] = ..., trim_fraction: _Optional[float] = ..., byzantine_silos: _Optional[int] = ..., multi_krum_keep: _Optional[int] = ..., clip_norm: _Optional[float] = ..., clip_median_factor: _Optional[float] = ..., wire_dtype: _Optional[str] = ..., wait_timeout_s: _Optional[float] = ..., local_optimizer: _Optional[str] = ...) -> None: ...

class RoundSummary(_message.Message):
    __slots__ = ("round", "selected", "contributed", "num_samples", "mean_train_loss", "bytes_sent", "bytes_received", "seconds", "rejected", "mean_gamma", "learning_rate", "evaluation", "evaluated_by", "update_norm", "clipped", "excluded", "failures", "reselections")
    class EvaluationEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class FailuresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SELECTED_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTED_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MEAN_TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    MEAN_GAMMA_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    EVALUATED_BY_FIELD_NUMBER: _ClassVar[int]
    UPDATE_NORM_FIELD_NUMBER: _ClassVar[int]
    CLIPPED_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    RESELECTIONS_FIELD_NUMBER: _ClassVar[int]
    round: int
    selected: _containers.RepeatedScalarFieldContainer[str]
    contributed: _containers.RepeatedScalarFieldContainer[str]
    num_samples: int
    mean_train_loss: float
    bytes_sent: int
    bytes_received: int
    seconds: float
    rejected: int
    mean_gamma: float
    learning_rate: float
    evaluation: _containers.ScalarMap[str, float]
    evaluated_by: _containers.RepeatedScalarFieldContainer[str]
    update_norm: float
    clipped: _containers.RepeatedScalarFieldContainer[str]
    excluded: _containers.RepeatedScalarFieldContainer[str]
    failures: _containers.ScalarMap[str, str]
    reselections: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, round: _Optional[int] = ..., selected: _Optional[_Iterable[str]] = ..., contributed: _Optional[_Iterable[str]] = ..., num_samples: _Optional[int] = ..., mean_train_loss: _Optional[float] = ..., bytes_sent: _Optional[int] = ..., bytes_received: _Optional[int] = ..., seconds: _Optional[float] = ..., rejected: _Optional[int] = ..., mean_gamma: _Optional[float] = ..., learning_rate: _Optional[float] = ..., evaluation: _Optional[_Mapping[str, float]] = ..., evaluated_by: _Optional[_Iterable[str]] = ..., update_norm: _Optional[float] = ..., clipped: _Optional[_Iterable[str]] = ..., excluded: _Optional[_Iterable[str]] = ..., failures: _Optional[_Mapping[str, str]] = ..., reselections: _Optional[_Iterable[str]] = ...) -> None: ...

class SiloProgress(_message.Message):
    __slots__ = ("silo_id", "stage", "seconds")
    SILO_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    silo_id: str
    stage: str
    seconds: float
    def __init__(self, silo_id: _Optional[str] = ..., stage: _Optional[str] = ..., seconds: _Optional[float] = ...) -> None: ...

class RunStatus(_message.Message):
    __slots__ = ("run_id", "state", "spec", "completed_rounds", "phase", "history", "message", "waiting_reason", "round_progress", "eta_s", "started_at", "base_model_fingerprint", "base_model_weights_fingerprint")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    WAITING_REASON_FIELD_NUMBER: _ClassVar[int]
    ROUND_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ETA_S_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_WEIGHTS_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    state: RunState
    spec: RunSpec
    completed_rounds: int
    phase: RoundPhase
    history: _containers.RepeatedCompositeFieldContainer[RoundSummary]
    message: str
    waiting_reason: str
    round_progress: _containers.RepeatedCompositeFieldContainer[SiloProgress]
    eta_s: float
    started_at: float
    base_model_fingerprint: str
    base_model_weights_fingerprint: str
    def __init__(self, run_id: _Optional[str] = ..., state: _Optional[_Union[RunState, str]] = ..., spec: _Optional[_Union[RunSpec, _Mapping]] = ..., completed_rounds: _Optional[int] = ..., phase: _Optional[_Union[RoundPhase, str]] = ..., history: _Optional[_Iterable[_Union[RoundSummary, _Mapping]]] = ..., message: _Optional[str] = ..., waiting_reason: _Optional[str] = ..., round_progress: _Optional[_Iterable[_Union[SiloProgress, _Mapping]]] = ..., eta_s: _Optional[float] = ..., started_at: _Optional[float] = ..., base_model_fingerprint: _Optional[str] = ..., base_model_weights_fingerprint: _Optional[str] = ...) -> None: ...

class RunLine(_message.Message):
    __slots__ = ("run_id", "state", "completed_rounds", "rounds", "strategy", "started_at", "message")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    state: RunState
    completed_rounds: int
    rounds: int
    strategy: str
    started_at: float
    message: str
    def __init__(self, run_id: _Optional[str] = ..., state: _Optional[_Union[RunState, str]] = ..., completed_rounds: _Optional[int] = ..., rounds: _Optional[int] = ..., strategy: _Optional[str] = ..., started_at: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...

class RunList(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[RunLine]
    def __init__(self, runs: _Optional[_Iterable[_Union[RunLine, _Mapping]]] = ...) -> None: ...

class StartRunRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: RunSpec
    def __init__(self, spec: _Optional[_Union[RunSpec, _Mapping]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class SiloInfo(_message.Message):
    __slots__ = ("silo_id", "connected", "seconds_since_seen", "num_train_samples", "state", "num_test_samples", "revoked", "revoked_reason", "notes", "key_fingerprint", "certificate_not_after")
    SILO_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    SECONDS_SINCE_SEEN_FIELD_NUMBER: _ClassVar[int]
    NUM_TRAIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NUM_TEST_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    REVOKED_REASON_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    KEY_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    silo_id: str
    connected: bool
    seconds_since_seen: float
    num_train_samples: int
    state: str
    num_test_samples: int
    revoked: bool
    revoked_reason: str
    notes: _containers.RepeatedScalarFieldContainer[str]
    key_fingerprint: str
    certificate_not_after: float
    def __init__(self, silo_id: _Optional[str] = ..., connected: _Optional[bool] = ..., seconds_since_seen: _Optional[float] = ..., num_train_samples: _Optional[int] = ..., state: _Optional[str] = ..., num_test_samples: _Optional[int] = ..., revoked: _Optional[bool] = ..., revoked_reason: _Optional[str] = ..., notes: _Optional[_Iterable[str]] = ..., key_fingerprint: _Optional[str] = ..., certificate_not_after: _Optional[float] = ...) -> None: ...

class SiloList(_message.Message):
    __slots__ = ("silos",)
    SILOS_FIELD_NUMBER: _ClassVar[int]
    silos: _containers.RepeatedCompositeFieldContainer[SiloInfo]
    def __init__(self, silos: _Optional[_Iterable[_Union[SiloInfo, _Mapping]]] = ...) -> None: ...

class StopRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class SiloRequest(_message.Message):
    __slots__ = ("silo_id", "reason")
    SILO_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    silo_id: str
    reason: str
    def __init__(self, silo_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ExportRequest(_message.Message):
    __slots__ = ("round", "run_id")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    round: int
    run_id: str
    def __init__(self, round: _Optional[int] = ..., run_id: _Optional[str] = ...) -> None: ...

class ExportHeader(_message.Message):
    __slots__ = ("run_id", "round", "adapter_config_json", "adapter")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    adapter_config_json: str
    adapter: PayloadHeader
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., adapter_config_json: _Optional[str] = ..., adapter: _Optional[_Union[PayloadHeader, _Mapping]] = ...) -> None: ...

class ExportChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: ExportHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[ExportHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

"""Every Redis key and queue name, in one place, so a reader sees the whole layout at once.

Per job (``{id}`` is the job id):
  job:{id}                 string  JobRecord JSON (immutable after submit)
  job:{id}:meta            hash    state, message, updated_at
  job:{id}:counters        hash    JobCounters fields plus ``rejected:<reason>`` fields
  job:{id}:budget          hash    max_cost_micro_usd, max_tokens: the spending cap in force (``workers.budget``)
  job:{id}:items           stream  GeneratedItem JSON, consumed by the ``curate`` group
  job:{id}:generated       set     item indexes already generated (a retried chunk skips them)
  job:{id}:plans           hash    "start-stop" -> ms: item ranges planned but not yet enqueued
  job:{id}:ranges          list    "start-stop" of every range ever planned (the watchdog's map of chunks)
  job:{id}:redrives        hash    arq chunk id -> "times:generated" (chunks the watchdog enqueued again)
  job:{id}:vtime           string  queue score (ms) of the job's last enqueued chunk (fair share, ``jobstore``)
  job:{id}:decisions       hash    item index -> "a:<seq>" / "r:<seq>:<reason>[:<dup_of>]" (idempotent curation)
  job:{id}:exact           hash    normalised-text hash -> example id of kept instructions
  job:{id}:lsh:{band}      hash    band hash -> example id (MinHash LSH buckets)
  job:{id}:sig             hash    example id -> MinHash signature (to verify LSH candidates)
  job:{id}:emb             hash    example id -> instruction embedding, float32 (semantic dedup)
  job:{id}:emb:log         list    example ids of ``emb`` in the order they were kept
  job:{id}:accepted:{b}    hash    seq -> Example JSON, 1,000 per bucket (no giant key)
  job:{id}:rejected:{b}    hash    seq -> Example JSON
  job:{id}:review          hash    example id -> ReviewItem JSON (math review queue; ``workers.review.store``)
  job:{id}:review:order    zset    example id by example index (the queue's stable order)
  job:{id}:review:seeded   string  accepted examples (by seq) already given a review item
  job:{id}:review:{ex}:log list    ReviewVersion JSON, one per change of item ``ex``
  job:{id}:replay:{start}  hash    "index:attempt:digest:n" -> ChatResult JSON: answers kept for chunk ``start``
                                   (``workers.llm.replay``; TTL, dropped when the chunk or the job ends)
  job:{id}:replay          hash    bytes / refused / "chunk:{start}" -> bytes: the job's replay cache size

Fleet-wide (see ``workers.liveness``):
  worker:{wid}             string  a worker process's heartbeat; expires when it stops beating
  running                  hash    arq job id -> id of the worker running it
  watchdog                 hash    job id -> "progress fingerprint|since ms" (see ``workers.watchdog``)
  stats                    hash    "<metric>|<endpoint>" -> ever-growing number (HINCRBYFLOAT; ``workers.stats``)
  gauges                   hash    "<metric>|<endpoint>" -> current value (``workers.stats``); both go to /metrics
  adaptive:{ep}:state      hash    limit (float), baseline, recent (s), baseline_ms, cut_ms: AIMD state of endpoint ep
  adaptive:{ep}:leases     zset    lease id -> expiry ms (Redis TIME): attempts in flight (``workers.llm.adaptive``)
"""

PREFIX = "skillmix"
QUEUE_NAME = f"{PREFIX}:queue"
CURATE_GROUP = "curate"
JOBS_INDEX = f"{PREFIX}:jobs"  # zset: job id -> created timestamp
ACTIVE_JOBS = f"{PREFIX}:jobs:active"  # set of job ids whose stream may hold work
SKILL_SETS_INDEX = f"{PREFIX}:skillsets"  # set of skill set names
RUNNING = f"{PREFIX}:running"  # hash: arq job id -> worker id
REDRIVE_LOCK = f"{PREFIX}:redrive-lock"  # string: the worker re-enqueueing stale plans this interval
WATCHDOG = f"{PREFIX}:watchdog"  # hash: job id -> "fingerprint|since_ms"
WATCHDOG_LOCK = f"{PREFIX}:watchdog-lock"  # string: the worker watching jobs this interval
STATS = f"{PREFIX}:stats"  # hash: "<metric>|<endpoint>" -> monotonic total, exported as skillmix_<metric>_total
GAUGES = f"{PREFIX}:gauges"  # hash: "<metric>|<endpoint>" -> current value, exported as gauge skillmix_<metric>
BUCKET_SIZE = 1000


def job(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def meta(job_id: str) -> str:
    return f"{job(job_id)}:meta"


def counters(job_id: str) -> str:
    return f"{job(job_id)}:counters"


def budget(job_id: str) -> str:
    return f"{job(job_id)}:budget"


def items(job_id: str) -> str:
    return f"{job(job_id)}:items"


def generated(job_id: str) -> str:
    return f"{job(job_id)}:generated"


def pending_plans(job_id: str) -> str:
    return f"{job(job_id)}:plans"


def ranges(job_id: str) -> str:
    return f"{job(job_id)}:ranges"


def redrives(job_id: str) -> str:
    return f"{job(job_id)}:redrives"


def vtime(job_id: str) -> str:
    return f"{job(job_id)}:vtime"


def decisions(job_id: str) -> str:
    return f"{job(job_id)}:decisions"


def exact(job_id: str) -> str:
    return f"{job(job_id)}:exact"


def lsh_prefix(job_id: str) -> str:
    return f"{job(job_id)}:lsh:"


def signatures(job_id: str) -> str:
    return f"{job(job_id)}:sig"


def embeddings(job_id: str) -> str:
    return f"{job(job_id)}:emb"


def embeddings_log(job_id: str) -> str:
    return f"{job(job_id)}:emb:log"


def bucket_prefix(job_id: str, kind: str) -> str:
    return f"{job(job_id)}:{kind}:"


def bucket(job_id: str, kind: str, seq: int) -> str:
    return f"{bucket_prefix(job_id, kind)}{seq // BUCKET_SIZE}"


def limiter_channel(db: int) -> str:
    """pub/sub: "<endpoint> <ms>" (429 cool-down), "<endpoint> limits". Channels are server-wide while keys are
    per database, so the name carries the database: two fleets (or test runs) on one server never pause each other."""
    return f"{PREFIX}:limit:signals:{db}"


def limiter_tat(endpoint: str) -> str:
    """hash r/t: the fleet limiter's theoretical arrival times (ms, Redis clock) for requests and tokens."""
    return f"{PREFIX}:limit:{endpoint}:tat"


def limiter_cooldown(endpoint: str) -> str:
    """string: Redis-clock ms until which nobody calls the endpoint (a 429's Retry-After); expires then."""
    return f"{PREFIX}:limit:{endpoint}:cool"


def limiter_limits(endpoint: str) -> str:
    """hash rpm/tpm: limits set at run time (PATCH /v1/endpoints/{name}); they replace the configured ones."""
    return f"{PREFIX}:limit:{endpoint}:set"


def limiter_learned(endpoint: str) -> str:
    """hash rpm/tpm: limits the provider's x-ratelimit-limit-* headers announced (lower wins); expires."""
    return f"{PREFIX}:limit:{endpoint}:learned"


def skill_set(name: str) -> str:
    return f"{PREFIX}:skillset:{name}"


def invalid_pairs(skill_set_ref: str) -> str:
    """set: "a|b" (sorted skill names) of pairs the math recipe found invalid in this skill set version;
    shared by every worker and later job, consulted before a pair-validation call."""
    return f"{PREFIX}:skillset:{skill_set_ref}:invalid-pairs"


def replay(job_id: str, start: int) -> str:
    return f"{job(job_id)}:replay:{start}"


def replay_index(job_id: str) -> str:
    return f"{job(job_id)}:replay"


def heartbeat(worker_id: str) -> str:
    return f"{PREFIX}:worker:{worker_id}"


def review(job_id: str) -> str:
    return f"{job(job_id)}:review"


def review_order(job_id: str) -> str:
    return f"{job(job_id)}:review:order"


def review_seeded(job_id: str) -> str:
    return f"{job(job_id)}:review:seeded"


def review_log(job_id: str, example_id: str) -> str:
    return f"{job(job_id)}:review:{example_id}:log"


REVIEW_RECIPES = f"{PREFIX}:review:recipes"  # hash: job id -> recipe (which jobs have a review queue)


def adaptive_state(endpoint: str) -> str:
    """hash: the shared AIMD state of an endpoint with ``concurrency: adaptive`` (``workers.llm.adaptive``)."""
    return f"{PREFIX}:adaptive:{endpoint}:state"


def adaptive_leases(endpoint: str) -> str:
    """zset: one member per HTTP attempt in flight, scored by its expiry (ms), so a killed worker's expire."""
    return f"{PREFIX}:adaptive:{endpoint}:leases"

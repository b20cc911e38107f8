"""Every Redis key and queue name, in one place, so a reader sees the whole layout at once.

Per job (``{id}`` is the job id):
  job:{id}                 string  JobRecord JSON (immutable after submit)
  job:{id}:meta            hash    state, message, updated_at; team (the owner, so Lua finds the team's keys);
                                   paused_by ("job" or "team": which budget paused it, so the right resume applies)
  job:{id}:counters        hash    JobCounters fields plus ``rejected:<reason>`` fields
  job:{id}:budget          hash    max_cost_micro_usd, max_tokens: the spending cap in force (``store.budget``)
  job:{id}:items           stream  GeneratedItem JSON, consumed by the ``curate`` group
  job:{id}:generated       set     item indexes already generated (a retried chunk skips them)
  job:{id}:plans           hash    "start-stop" -> ms: item ranges planned but not yet enqueued
  job:{id}:ranges          list    "start-stop" of every range ever planned (the watchdog's map of chunks)
  job:{id}:redrives        hash    arq chunk id -> "times:generated" (chunks the watchdog enqueued again)
  job:{id}:vtime           string  "last stride": queue score (ms) of the job's last enqueued step and the spacing
                                   of its steps (fair share, ``store.queue``); an old plain "last" reads as stride 1
  job:{id}:decisions       hash    item index -> "a:<seq>" / "r:<seq>:<reason>[:<dup_of>]" (idempotent curation)
  job:{id}:exact           hash    normalised-text hash -> example id of kept instructions
  job:{id}:lsh:{band}      hash    band hash -> example id (MinHash LSH buckets)
  job:{id}:sig             hash    example id -> MinHash signature (to verify LSH candidates)
  job:{id}:emb             hash    example id -> instruction embedding, float32 (semantic dedup)
  job:{id}:emb:log         list    example ids of ``emb`` in the order they were kept
  job:{id}:accepted:{b}    hash    seq -> Example JSON, 1,000 per bucket (no giant key)
  job:{id}:rejected:{b}    hash    seq -> Example JSON
  job:{id}:review          hash    example id -> ReviewItem JSON (math review queue; ``store.review``)
  job:{id}:review:order    zset    example id by example index (the queue's stable order)
  job:{id}:review:seeded   string  accepted examples (by seq) already given a review item
  job:{id}:review:{ex}:log list    ReviewVersion JSON, one per change of item ``ex``
  job:{id}:replay:{start}  hash    "index:attempt:digest:n" -> ChatResult JSON: answers kept for chunk ``start``,
                                   or for a unit ``extract`` / ``help-{suggestion}`` (``workers.llm.replay``;
                                   TTL, dropped when the unit or the job ends)
  job:{id}:replay          hash    bytes / refused / "chunk:{start}" -> bytes: the job's replay cache size
  job:{id}:step            string  a stepped job's last started phase step (``store.stepped``; the runner sets it)

Provider batch mode (``store.batches``; ``G`` = ``job:{id}:batch:{ep}``, one job's requests to endpoint ep):
  G:open                   list    RequestLine JSON waiting for a file (gathering)
  G:lines                  hash    custom_id -> "o" (gathering) or the id of the open batch holding it: a request
                                   is never in two open batches; the field goes when the line's outcome is applied
  G:wake                   hash    custom_id -> arq id of the unit parked on it (woken when it is answered)
  G:tries                  hash    custom_id -> failed sends so far (counted against the endpoint's max_retries)
  G:submit                 string  the worker cutting the group's next file (a lease)
  job:{id}:batches         set     ids of the job's batches not yet applied
  batch:{bid}              string  BatchRecord JSON (one file of one job and endpoint; written by its poller)
  batch:{bid}:file         list    the file's RequestLine JSON (resubmitted from here after a failed validation)
  batch:{bid}:lock         string  the worker polling the batch (one at a time; a lease)
  batches:open             zset    batch id -> ms of its next poll
  batches:gathering        zset    "{job}|{ep}" -> ms its first gathering line came (0: the rest of a split file)
  batches:wake             zset    arq id -> ms: units to run again once they are not running

Per extraction job (``X`` = ``job:{id}:x``; ``store.extraction``); per-row hashes are bucketed like ``bucket``:
  X:state                  hash    phase, resume position, merge round (what the next step continues from)
  X:fine:{b}               hash    row -> fine label; "" = reported unlabelled in the label phase
  X:level:{r}              zset    labels entering merge round r, all score 0 so batches come in name order
  X:weight:{r}             hash    label -> rows behind it (shown to the merger)
  X:done:{r}               set     merge batches of round r already applied
  X:coarse                 string  JSON list of the final coarse skills ({name, description})
  X:map:{b}                hash    row -> coarse skill; "" = reported unlabelled in the map phase
  X:freq                   hash    coarse skill -> rows mapped to it
  X:ex:{skill}             zset    exemplar text, score = row; only the lowest ``MAX_EXEMPLARS`` rows kept
  X:unlabelled:{b}         hash    seq -> UnlabelledRow JSON (seq = the job's ``rejected`` counter)
  X:agnostic               hash    finished model-only steps: "topics", "skills:{topic}", "query_types"
  X:notes                  set     remarks for the job's final message (e.g. "3 of 10 topics")

Teams and keys (``store.teams``):
  teams                    set     team names
  team:{t}                 hash    name, created_at, max_running_jobs, max_usd_per_day, max_tokens_per_day
  team:{t}:jobs            zset    job id -> created timestamp: the team's jobs (its listing)
  team:{t}:running         zset    job id -> admission ms (Redis clock): the team's unfinished jobs (queued, running,
                                   paused); admitted against max_running_jobs and released at a finished state in
                                   one Lua script each (``store.quotas``, ``store.records``); also the team's size
                                   in fair share (``store.queue``)
  team:{t}:day:{n}         hash    micro_usd, tokens: the team's spend on UTC day n (days since 1970-01-01 by Redis's
                                   clock), added by every metered charge (``store.budget.CHARGE``); expires after
                                   a few days
  team:{t}:audit           stream  the team's audit entries (``store.audit``); ``audit`` holds every team's
  apikeys                  zset    key id -> created timestamp
  apikey:{kid}             hash    ApiKey fields (id, prefix, team, role, name, created_at, created_by, revoked_at)
  apikey:sha:{sha256}      string  KeyLookup JSON (the Caller and the SHA-256) of a live key; deleted at revocation
  authfail:{address}       string  failed authentications from a client address this window (``service.auth``)
  idem:{t}:{sha256}        string  IdempotentRecord JSON of an Idempotency-Key (by its SHA-256) of team t: pending
                                   (a lease) or done (the first response, kept 24 h; ``store.idempotency``)
  team:{t}:quality-profiles hash   profile name -> QualityProfile JSON (``store.quality_profiles``)
  idem:{t}:{sha256}:job    string  "fingerprint job_id": the job the key's last claim set out to create (24 h)

Fleet-wide (see ``workers.liveness``):
  jobs                     zset    job id -> created timestamp
  jobs:active              set     job ids whose stream may hold work
  queue                    zset    arq's queue: arq job id -> score (ms; fair share, ``store.queue``)
  endpoints                hash    name -> EndpointSettings JSON: endpoints registered at run time
  skillset:{ns}:{name}     hash    version -> SkillSet JSON; ns = the owning team, or ``_public`` for a published
                                   set; ``skillsets:{ns}`` is the set of names (``store.skill_sets``)
  skillset:{team}:{ref}:invalid-pairs  set  "a|b" pairs the math recipe found invalid in that skill set version
  limit:{ep}:tat|cool|set|learned  the fleet limiter's state and limits of endpoint ep (``store.limits``)
  review:recipes           hash    job id -> recipe (which jobs have a review queue)
  worker:{wid}             string  a worker process's heartbeat; expires when it stops beating
  running                  hash    arq job id -> id of the worker running it
  watchdog                 hash    job id -> "progress fingerprint|since ms" (see ``workers.watchdog``)
  stats                    hash    "<metric>|<endpoint>" -> ever-growing number (HINCRBYFLOAT; ``store.stats``)
  gauges                   hash    "<metric>|<endpoint>" -> current value (``store.stats``); both go to /metrics
  adaptive:{ep}:state      hash    limit (float), baseline, recent (s), baseline_ms, cut_ms: AIMD state of endpoint ep
  adaptive:{ep}:leases     zset    lease id -> expiry ms (Redis TIME): attempts in flight (``workers.llm.adaptive``)

arq job ids, one per ``Step`` of the one arq function ``STEP_FUNCTION`` (arq keeps ``arq:job:<id>``,
``arq:in-progress:<id>`` ... under them):
  chunk:{id}:{start}-{stop}   a chunk of a job's items (``schemas.jobs.ChunkTask.arq_id``; ``chunk_id`` here)
  phase:{id}:{step}           a phase step of a stepped job, e.g. extraction (``schemas.jobs.PhaseTask.arq_id``)
  help:{id}:{suggestion}      a review-help request on a job's item (``schemas.review.HelpTask.arq_id``)
"""

PREFIX = "skillmix"
QUEUE_NAME = f"{PREFIX}:queue"
STEP_FUNCTION = "run_step"  # the one arq function (``workers.runner.step``); its ids: ``skillmix:{kind}:{job}:...``
CURATE_GROUP = "curate"
JOBS_INDEX = f"{PREFIX}:jobs"  # zset: job id -> created timestamp
ACTIVE_JOBS = f"{PREFIX}:jobs:active"  # set of job ids whose stream may hold work
ENDPOINTS = f"{PREFIX}:endpoints"  # hash: name -> EndpointSettings JSON (``store.endpoints``, run-time registry)
RUNNING = f"{PREFIX}:running"  # hash: arq job id -> worker id
REDRIVE_LOCK = f"{PREFIX}:redrive-lock"  # string: the worker re-enqueueing stale plans this interval
WATCHDOG = f"{PREFIX}:watchdog"  # hash: job id -> "fingerprint|since_ms"
WATCHDOG_LOCK = f"{PREFIX}:watchdog-lock"  # string: the worker watching jobs this interval
STATS = f"{PREFIX}:stats"  # hash: "<metric>|<endpoint>" -> monotonic total, exported as skillmix_<metric>_total
GAUGES = f"{PREFIX}:gauges"  # hash: "<metric>|<endpoint>" -> current value, exported as gauge skillmix_<metric>
TEAMS = f"{PREFIX}:teams"  # set: team names
API_KEYS = f"{PREFIX}:apikeys"  # zset: key id -> created timestamp
AUDIT = f"{PREFIX}:audit"  # stream: every write (``store.audit``), capped
BATCHES_OPEN = f"{PREFIX}:batches:open"  # zset: batch id -> ms of its next poll (``store.batches``)
BATCHES_GATHERING = f"{PREFIX}:batches:gathering"  # zset: "{job}|{ep}" -> ms its gathering started
BATCHES_WAKE = f"{PREFIX}:batches:wake"  # zset: arq id -> ms: parked units to run again
BUCKET_SIZE = 1000


def team(name: str) -> str:
    return f"{PREFIX}:team:{name}"


def team_running(name: str) -> str:
    """zset: the team's unfinished jobs, scored by admission ms (``store.quotas``)."""
    return f"{team(name)}:running"


TEAM_PREFIX = f"{PREFIX}:team:"  # Lua builds a team's keys from its name: TEAM_PREFIX .. name .. ":running"
JOB_PREFIX = f"{PREFIX}:job:"  # and a job's: JOB_PREFIX .. id .. ":meta" (one Redis, not a cluster)
TEAM_DAY_TTL_S = 3 * 86400  # a day's spend stays readable for a few days, then goes


def team_day(name: str, day: int) -> str:
    """hash micro_usd, tokens: the team's spend on UTC day ``day`` (days since the epoch)."""
    return f"{team(name)}:day:{day}"


def team_audit(name: str) -> str:
    """stream: the team's writes (``store.audit``), capped."""
    return f"{team(name)}:audit"


def quality_profiles(team_name: str) -> str:
    """hash: profile name -> QualityProfile JSON, the team's named judge settings (``store.quality_profiles``)."""
    return f"{team(team_name)}:quality-profiles"


def team_jobs(name: str) -> str:
    return f"{team(name)}:jobs"


def auth_failures(address: str) -> str:
    """string: failed authentications from a client address in the current window (expires with it)."""
    return f"{PREFIX}:authfail:{address}"


def idempotency(team: str, key_sha256: str) -> str:
    """string: an Idempotency-Key's claim or first response (``store.idempotency``), per team."""
    return f"{PREFIX}:idem:{team}:{key_sha256}"


def api_key(key_id: str) -> str:
    return f"{PREFIX}:apikey:{key_id}"


def api_key_by_hash(sha256_hex: str) -> str:
    return f"{PREFIX}:apikey:sha:{sha256_hex}"


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


def skill_set(namespace: str, name: str) -> str:
    """hash version -> SkillSet JSON of a team's set (``namespace`` = the team) or a published one."""
    return f"{PREFIX}:skillset:{namespace}:{name}"


def skill_sets_index(namespace: str) -> str:
    """set: the names of a team's (or the published) skill sets."""
    return f"{PREFIX}:skillsets:{namespace}"


def invalid_pairs(team: str, skill_set_ref: str) -> str:
    """set: "a|b" (sorted skill names) of pairs the math recipe found invalid in this skill set version;
    shared by every worker and the team's later jobs, consulted before a pair-validation call."""
    return f"{PREFIX}:skillset:{team}:{skill_set_ref}:invalid-pairs"


def step(job_id: str) -> str:
    """string: a stepped job's last started phase step (``store.stepped``)."""
    return f"{job(job_id)}:step"


def replay(job_id: str, start: int | str) -> str:
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


def chunk_id(job_id: str, start: int, stop: int) -> str:
    """The arq job id of the chunk ``[start, stop)``: deterministic, so enqueueing it twice runs it once."""
    return f"{chunk_id_prefix(job_id)}{start}-{stop}"


def chunk_id_prefix(job_id: str) -> str:
    """What every arq id of the job's chunks starts with (the watchdog finds a job's running chunks by it)."""
    return f"{PREFIX}:chunk:{job_id}:"


def phase_id(job_id: str, step: int) -> str:
    """The arq job id of a stepped job's phase step ``step``."""
    return f"{PREFIX}:phase:{job_id}:{step}"


def help_id(job_id: str, suggestion_id: str) -> str:
    """The arq job id of a review-help request on one of the job's items."""
    return f"{PREFIX}:help:{job_id}:{suggestion_id}"


def job_of_step(arq_id: str) -> str | None:
    """The job id in a step's arq id (``skillmix:{kind}:{job}:...``, the three above), None for another id."""
    parts = arq_id.split(":")
    return parts[2] if len(parts) > 3 and parts[0] == PREFIX else None


def extract(job_id: str) -> str:
    """The prefix of an extraction job's keys (``X`` in the layout above)."""
    return f"{job(job_id)}:x"


def extract_bucket(job_id: str, kind: str, row: int) -> str:
    """hash of ``kind`` ("fine", "map") holding ``row``, bucketed like ``bucket``."""
    return f"{extract(job_id)}:{kind}:{row // BUCKET_SIZE}"


def extract_state(job_id: str) -> str:
    return f"{extract(job_id)}:state"


def extract_level(job_id: str, r: int) -> str:
    return f"{extract(job_id)}:level:{r}"


def extract_weight(job_id: str, r: int) -> str:
    return f"{extract(job_id)}:weight:{r}"


def extract_done(job_id: str, r: int) -> str:
    return f"{extract(job_id)}:done:{r}"


def extract_coarse(job_id: str) -> str:
    return f"{extract(job_id)}:coarse"


def extract_freq(job_id: str) -> str:
    return f"{extract(job_id)}:freq"


def extract_exemplars_prefix(job_id: str) -> str:
    """``+ skill``: the zset of a coarse skill's exemplars (the map script appends the skill itself)."""
    return f"{extract(job_id)}:ex:"


def extract_unlabelled_prefix(job_id: str) -> str:
    """``+ bucket``: a hash of unlabelled-row reports (the report script appends the bucket itself)."""
    return f"{extract(job_id)}:unlabelled:"


def extract_agnostic(job_id: str) -> str:
    return f"{extract(job_id)}:agnostic"


def extract_notes(job_id: str) -> str:
    return f"{extract(job_id)}:notes"


def batch_group(job_id: str, endpoint: str) -> str:
    """Prefix of one job's batch requests to one endpoint: ``:open``, ``:lines``, ``:wake``, ``:tries``."""
    return f"{PREFIX}:job:{job_id}:batch:{endpoint}"


def job_batches(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:batches"


def batch(batch_id: str) -> str:
    return f"{PREFIX}:batch:{batch_id}"


def batch_submit_lock(job_id: str, endpoint: str) -> str:
    return f"{batch_group(job_id, endpoint)}:submit"

"""The typed reading of a stored record: every field a command uses, parsed once, with bounds.

A record is untrusted input (a colleague's store, an archive, a MongoDB database): its JSON may
nest thousands deep, hold a 4,000-digit integer, a dict where a string belongs or a name that
is a path. Everything any store hands out goes through here first (files, MongoDB documents
and archives alike), so what a `RunRecord` holds has the types and ranges below, and a value
that does not parse is a `BadField` naming the field and what would be valid; the reader skips
the run with that one line. Fields not listed (a newer study's `info.health`, plugin extras)
are kept as bounded JSON: depth, size, string length and integer range checked.

Plain functions rather than a validation library: the rules are small, most fields are
optional (records of earlier versions lack some), and the errors must name the field.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from pathlib import Path, PurePosixPath

from study.errors import StoreError

MAX_DEPTH = 24  # a run's records nest 5 deep; plugin extras get room
MAX_STRING = 1 << 20  # one string (a captured output is read elsewhere)
MAX_ITEMS = 1_000_000  # one list or object
MAX_INT_DIGITS = 20  # JSON integers: 64-bit and a little more; 4,000 digits is an attack
INT_LIMIT = 1 << 63
MAX_FILE_BYTES = 256 << 20  # one JSON file of a run (metrics of a long run are megabytes)
NAME_LEN = 255
_NAME_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+ -]*$")


class BadField(StoreError):
    """A field of a record that does not parse: `field` names it, the message says why."""

    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem
        super().__init__(f"{field} {problem}")


def _show(value) -> str:
    text = repr(value) if not isinstance(value, dict | list) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


# -- bounded JSON ---------------------------------------------------------------------------


def _bounded_int(text: str) -> int:
    digits = text.lstrip("-")
    if len(digits) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(digits):,} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def loads(text: str | bytes) -> object:
    """JSON text as Python values, refusing what no study record holds: integers beyond 20
    digits and nesting beyond MAX_DEPTH (checked without recursion). ValueError says why."""
    if len(text) > MAX_FILE_BYTES:
        raise ValueError(f"{len(text):,} bytes (at most {MAX_FILE_BYTES:,})")
    _check_nesting(text)
    try:
        value = json.loads(text, parse_int=_bounded_int)
    except RecursionError:
        raise ValueError(f"nested over {MAX_DEPTH} deep") from None
    check_tree(value, "")
    return value


def _check_nesting(text: str | bytes) -> None:
    """Brackets nested over MAX_DEPTH, counted before parsing (strings may hold brackets:
    counting them too only ever over-counts, and no study record nests near the bound)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    depth = peak = 0
    for match in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', text):
        token = match.group(0)
        if token in "[{":
            depth += 1
            peak = max(peak, depth)
            if peak > MAX_DEPTH:
                raise ValueError(f"nested over {MAX_DEPTH} deep")
        elif token in "]}":
            depth -= 1


def read_json_file(path: Path) -> object:
    """A run's JSON file, bounded (see `loads`); StoreError names the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ValueError(f"{size:,} bytes (at most {MAX_FILE_BYTES:,})")
        return loads(path.read_bytes())
    except FileNotFoundError:
        raise StoreError(f"{path}: no such run file") from None
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: unreadable run file ({exc})") from None


def check_tree(value, field: str, extra_leaves: tuple = ()) -> None:
    """Bounded JSON (or a MongoDB document, whose `extra_leaves` are datetimes and ids):
    depth, sizes, string lengths, integer range; iterative, so a deep tree cannot crash it."""
    stack = [(value, field, 0)]
    while stack:
        v, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            where = where if len(where) <= 80 else f"{where[:60]}...{where[-10:]}"
            raise BadField(where or "the record", f"nests over {MAX_DEPTH} deep")
        if v is None or isinstance(v, bool | float):
            continue
        if isinstance(v, int):
            if not -INT_LIMIT <= v < INT_LIMIT:
                raise BadField(where or "a value", "is an integer beyond 64 bits")
        elif isinstance(v, str):
            if len(v) > MAX_STRING:
                raise BadField(where or "a value", f"is a string of {len(v):,} characters")
        elif isinstance(v, dict):
            if len(v) > MAX_ITEMS:
                raise BadField(where or "an object", f"holds over {MAX_ITEMS:,} keys")
            for k, item in v.items():
                if not isinstance(k, str) or len(k) > NAME_LEN:
                    raise BadField(where or "an object", f"has a key {_show(k)}")
                stack.append((item, f"{where}.{k}" if where else k, depth + 1))
        elif isinstance(v, list | tuple):
            if len(v) > MAX_ITEMS:
                raise BadField(where or "a list", f"holds over {MAX_ITEMS:,} items")
            stack.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(v))
        elif not isinstance(v, extra_leaves):
            raise BadField(where or "a value", f"is a {type(v).__name__}; expected JSON")


# -- field types ----------------------------------------------------------------------------
# Each is a function (value, field) -> value that raises BadField; None means "absent".


def text(max_len: int = 10_000):
    def parse(v, field):
        if not isinstance(v, str):
            raise BadField(field, f"is {_show(v)}; expected a string")
        if len(v) > max_len:
            raise BadField(field, f"is {len(v):,} characters long; expected at most {max_len:,}")
        return v

    return parse


def integer(lo: int, hi: int):
    def parse(v, field):
        if isinstance(v, float) and v.is_integer() and lo <= v <= hi:
            v = int(v)  # JSON writers may write 3.0
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise BadField(field, f"is {_show(v)}; expected an integer in {lo:,}..{hi:,}")
        return v

    return parse


def number(lo: float = -math.inf, hi: float = math.inf, nan: bool = False):
    """A finite number in lo..hi (NaN too where `nan`: a diverged run's loss)."""

    def parse(v, field):
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise BadField(field, f"is {_show(v)}; expected a number in {lo:g}..{hi:g}")
        try:
            f = float(v)
        except OverflowError:
            raise BadField(field, f"is {_show(v)}; expected a number in {lo:g}..{hi:g}") from None
        if math.isnan(f) and nan:
            return f
        if not lo <= f <= hi:
            raise BadField(field, f"is {_show(v)}; expected a number in {lo:g}..{hi:g}")
        return v  # an integer stays one (a parameter count is shown as one)

    return parse


def boolean(v, field):
    if not isinstance(v, bool):
        raise BadField(field, f"is {_show(v)}; expected true or false")
    return v


def anything(v, field):  # already bounded by check_tree
    return v


def one_of(*types):
    """The first of `types` that parses it."""

    def parse(v, field):
        for t in types:
            try:
                return t(v, field)
            except BadField as exc:
                last = exc
        raise last

    return parse


def time(v, field):
    """A recorded time: ISO text (file stores) or a datetime (MongoDB), as ISO text."""
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, str) and len(v) <= 64:
        try:
            datetime.fromisoformat(v)
            return v
        except ValueError:
            pass
    raise BadField(field, f"is {_show(v)}; expected an ISO date and time")


def list_of(item, max_items: int = MAX_ITEMS, nulls: bool = True):
    """A list of `item`s (and nulls, where `nulls`)."""

    def parse(v, field):
        if not isinstance(v, list | tuple):
            raise BadField(field, f"is {_show(v)}; expected a list")
        if len(v) > max_items:
            raise BadField(field, f"holds {len(v):,} items; expected at most {max_items:,}")
        return [None if x is None and nulls else item(x, f"{field}[{i}]") for i, x in enumerate(v)]

    return parse


def map_of(value):
    def parse(v, field):
        if not isinstance(v, dict):
            raise BadField(field, f"is {_show(v)}; expected an object")
        return {k: None if x is None else value(x, f"{field}.{k}") for k, x in v.items()}

    return parse


def fields(**known):
    """An object whose `known` fields, where present and not null, have their types; other
    fields are kept as they are (bounded JSON)."""

    def parse(v, field):
        if not isinstance(v, dict):
            raise BadField(field, f"is {_show(v)}; expected an object")
        out = dict(v)
        for key, t in known.items():
            if out.get(key) is not None:
                out[key] = t(out[key], f"{field}.{key}" if field else key)
        return out

    return parse


def name_syntax(name) -> str | None:
    """What is wrong with `name` as a file named by a record (an artifact, a gallery image):
    None for a plain relative name (folders allowed) that stays inside the run's folder."""
    if not isinstance(name, str) or not name or len(name) > NAME_LEN:
        return "is not a name"
    if "\\" in name or "\0" in name or name.startswith("/"):
        return "is not a plain relative name"
    parts = PurePosixPath(name).parts
    if any(p in (".", "..") or not _NAME_PART.match(p) for p in parts) or not parts:
        return "is not a plain relative name"
    return None


# -- a run's record -------------------------------------------------------------------------

SHORT, LONG = text(200), text(4096)
COUNT = integer(0, 10**12)
NAME = text(200)

RUN = fields(
    status=text(32),
    experiment=fields(name=SHORT, base_dir=LONG, sources=list_of(list_of(anything, 2))),
    command=SHORT,
    host=fields(
        hostname=SHORT,
        cpu=SHORT,
        python_version=SHORT,
        os=list_of(SHORT, 16),
        study=fields(gpus=list_of(anything, 1024)),
    ),  # fmt: skip
    start_time=time,
    stop_time=time,
    heartbeat=time,
    # The result a report reads: accuracies in 0..1, a loss (NaN where training diverged).
    result=fields(top1=number(0, 1), top5=number(0, 1), test_loss=number(nan=True)),
    meta=fields(
        comment=text(1000),
        study_uid=text(200),
        reproduces=fields(id=SHORT, store=LONG),
        process=fields(host=SHORT, pid=integer(0, 1 << 31)),
    ),
    artifacts=list_of(anything, 100_000),  # names: checked one by one (left out, not fatal)
    resumed=list_of(time, 100_000),
    content_types=map_of(SHORT),
    mongo=fields(url=LONG, id=anything),
)

CONFIG = fields(
    model=NAME, dataset=NAME, seed=integer(-INT_LIMIT, INT_LIMIT - 1),
    epochs=integer(0, 10**6), image_size=integer(1, 1 << 16), time_budget=number(0),
    protocol=NAME, head=NAME, checkpoint_dir=LONG, data_root=LONG,
    batch_size=integer(1, 1 << 24),
)  # fmt: skip

_STRINGS = map_of(one_of(LONG, integer(-INT_LIMIT, INT_LIMIT - 1), number(), boolean))

INFO = fields(
    dataset=fields(
        name=NAME, title=SHORT, plugin=SHORT, num_classes=integer(1, 1_000_000),
        class_names=list_of(SHORT, 1_000_000),
        image_size=integer(1, 1 << 16), channels=integer(1, 64), train_count=COUNT,
        test_count=COUNT, train_available=COUNT, test_available=COUNT,
        content=map_of(SHORT), data_root=fields(typed=LONG, resolved=LONG), fingerprint=SHORT,
        mean=list_of(number(), 64), std=list_of(number(), 64), sources=list_of(LONG, 10_000),
    ),
    model=fields(
        name=NAME, title=SHORT, description=text(2000), plugin=SHORT, head=NAME,
        image_size=integer(1, 1 << 16),
        params=number(0, 1e15), trainable_params=number(0, 1e15), weight_mb=number(0, 1e9),
        gmacs_per_image=number(0, 1e12), macs_per_image=number(0, 1e21),
    ),
    training=fields(
        device=SHORT, device_name=SHORT, cpu_capability=SHORT, cpu_gflops=number(0, 1e9),
        torch_threads=integer(0, 1 << 20),
        cpus=integer(0, 1 << 20), processes=integer(1, 1 << 20),
        batch_per_process=integer(0, 1 << 24), data_on_device=boolean,
        epochs_completed=integer(0, 10**6), train_seconds=number(0, 1e10),
        compile_seconds=number(0, 1e10), stopped_by_budget=boolean, images_per_s=number(0),
        machines=list_of(fields(
            device=SHORT, device_name=SHORT, cpu_capability=SHORT, cpu_gflops=number(0, 1e9),
            torch_threads=integer(0, 1 << 20), cpus=integer(0, 1 << 20),
            processes=integer(1, 1 << 20), from_epoch=integer(0, 10**6),
            from_step=integer(0, 1 << 40),
        ), 100_000, nulls=False),
    ),
    departures=map_of(fields()),
    checkpoint=LONG,
    provenance=fields(
        study=SHORT,
        git=fields(commit=SHORT, branch=SHORT, dirty=boolean, diff_sha256=SHORT),
        plugins=map_of(SHORT), plugin_code=map_of(SHORT), versions=_STRINGS,
        determinism=_STRINGS,
        command=list_of(LONG, 10_000),
    ),
    per_class_accuracy=list_of(number(0, 1, nan=True), 1_000_000),
    # study.health's verdicts: per evaluation, and the last one's flags (`study runs`).
    health=fields(
        flags=list_of(SHORT, 16, nulls=False), reasons=list_of(text(2000), 16),
        stopped=text(2000),
        epochs=list_of(
            fields(epoch=COUNT, flags=list_of(SHORT, 16, nulls=False),
                   reasons=list_of(text(2000), 16)),
            10**6, nulls=False,
        ),
    ),
    misclassified=list_of(
        fields(
            index=COUNT, true=COUNT, predicted=COUNT, true_name=SHORT, predicted_name=SHORT,
            confidence=number(0, 1), artifact=anything,  # a name: checked against the run's
        ),
        100_000,
    ),
)  # fmt: skip


def parse(spec, value, what: str, extra_leaves: tuple = (), root: str = ""):
    """`value` (the whole of run.json, config.json, info.json, or the part `root` of a
    MongoDB document) typed by `spec`; BadField names `what` (a file or a document, if not
    said elsewhere) and the field."""
    try:
        check_tree(value, root, extra_leaves)
        return spec(value, root)
    except BadField as exc:
        field = exc.field or "the record"
        raise BadField(f"{what}: {field}" if what else field, exc.problem) from None

"""Text normalisation for the quality checks and dedup: the forms texts are compared in.

``normalise_text`` is what exact dedup hashes and what word counts split; ``content_words`` are the crudely
stemmed non-stopwords that topic overlap and novelty compare; ``_prose`` keeps punctuation for the phrase
regexes. All are memoised: every check of an item reads the same few texts.
"""

import unicodedata
from functools import lru_cache

# Sentence punctuation is dropped; operators and brackets stay so "x+1" and "x*1" remain different
# texts for the exact-duplicate hash (math and code instructions).
_KEEP_PUNCTUATION = frozenset("-*/%#&@\\_()[]{}")
_APOSTROPHES = str.maketrans(dict.fromkeys("'\u2019\u2018\u201a\u201b\u2032\u2035\u02bc`\u00b4"))
# Dash and quote variants written by different models, keyboards and editors: one form each, so an en dash
# and a hyphen (or curly and straight quotes) are the same text. The minus sign is a symbol, not punctuation, so it must
# be mapped explicitly or it would survive as a different character.
_VARIANTS = str.maketrans(
    dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2043\u2212\ufe58\ufe63\uff0d", "-")
    | dict.fromkeys("\u201c\u201d\u201e\u201f\u00ab\u00bb\u2039\u203a\u2033\u2036\u301d\u301e", '"')
)
_STRIP_TABLE: dict[int, str] = {}


def _strip_table(text: str) -> dict[int, str]:
    """Map every punctuation character seen so far to a space (built lazily, Unicode is large)."""
    for ch in set(text):
        code = ord(ch)
        if code not in _STRIP_TABLE and unicodedata.category(ch).startswith("P"):
            _STRIP_TABLE[code] = ch if ch in _KEEP_PUNCTUATION else " "
    return _STRIP_TABLE


# Pure-ASCII text (most of it) takes a fast path with the same result: the only ASCII punctuation dropped
# (bytes.translate is several times faster than str.translate with a dict).
_ASCII_STRIP = str.maketrans({**dict.fromkeys('!",.:;?', " "), "'": None, "`": None})
_ASCII_STRIP_BYTES = bytes.maketrans(b'!",.:;?', b"       ")
_ASCII_DELETE = b"'`"


@lru_cache(maxsize=1024)  # every check of an item reads the same few texts
def normalise_text(text: str) -> str:
    """The form texts are compared in: NFKC, lower-case, dash and quote variants unified, no apostrophes
    or sentence punctuation, single spaces."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
        for ch, plain in _COMMON_VARIANTS.items():  # str.replace is far faster than translate with a dict
            if ch in text:
                text = text.replace(ch, plain)
    if text.isascii():
        return " ".join(text.lower().encode().translate(_ASCII_STRIP_BYTES, _ASCII_DELETE).decode().split())
    text = text.lower().translate(_VARIANTS).translate(_APOSTROPHES)
    return " ".join(text.translate(_strip_table(text)).split())


_COMMON_VARIANTS = {"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-"}


@lru_cache(maxsize=1024)
def _words(text: str) -> tuple[str, ...]:
    return tuple(normalise_text(text).split())


@lru_cache(maxsize=256)
def _word_set(text: str) -> frozenset[str]:
    return frozenset(_words(text))


def words(text: str) -> list[str]:
    return list(_words(text))  # a fresh list: callers may change it


@lru_cache(maxsize=256)
def _prose(text: str) -> str:
    """Lower-case text with punctuation kept and apostrophes unified, for the phrase regexes."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
        if "\u2019" in text:
            text = text.replace("\u2019", "'")
        if not text.isascii():
            text = text.translate(_PROSE_APOSTROPHES)
    return " ".join(text.lower().split())


_PROSE_APOSTROPHES = str.maketrans(dict.fromkeys("\u2019\u2018\u201b\u02bc\u00b4\u2032`", "'"))


# About two hundred frequent function words: content words are what is left.
_STOPWORDS = frozenset(
    """
    a about above after again against all also am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had
    has have having he her here hers herself him himself his how i if in into is it its itself just
    me more most my myself no nor not now of off on once only or other our ours ourselves out over own
    same she should so some such than that the their theirs them themselves then there these they
    this those through to too under until up very was we were what when where which while who whom
    why will with would you your yours yourself yourselves im ive youre dont cant wont isnt arent
    doesnt didnt let lets may might must shall one ones get got make makes made many much well way
    ways thing things really like even still every per via etc use using used want need needs help
    """.split()
)


_STEMS: dict[str, str] = {}


@lru_cache(maxsize=256)
def content_words(text: str) -> frozenset[str]:
    """Crudely stemmed non-stopwords ("bake", "baking" -> "bak"): enough to tell whether a response
    talks about the things the instruction mentions."""
    if len(_STEMS) > 200_000:  # a memo of the vocabulary seen, bounded
        _STEMS.clear()
    normal = normalise_text(text)
    if "_" in normal or "-" in normal:
        unique = set(normal.replace("_", " ").replace("-", " ").split())
    else:
        unique = set(_words(text))  # already split
    for word in unique.difference(_STEMS):
        _STEMS[word] = "" if len(word) <= 2 or word in _STOPWORDS else _stem(word)
    found = frozenset(map(_STEMS.__getitem__, unique))
    return found - _EMPTY if "" in found else found


_EMPTY = frozenset([""])


def _stem(word: str) -> str:
    """Drop one suffix (-ing, -ed, -es, -s), keep 5 letters, drop a final e ("bake", "baking" -> "bak")."""
    stem = word
    if stem.endswith("s"):
        stem = stem[:-2] if stem.endswith("es") else stem[:-1]
    elif stem.endswith("ing"):
        stem = stem[:-3]
    elif stem.endswith("ed"):
        stem = stem[:-2]
    return stem[:5].rstrip("e") or word

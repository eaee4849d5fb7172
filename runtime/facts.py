"""A synthetic world of people and their attributes, for fact injection (SMF, Lin et al. 2025,
sec. 5.1, at toy scale; the bioS recipe of Allen-Zhu & Li, Physics of LMs 3.1).

Each person has a unique full name and one value per attribute. Every attribute has several
statement templates (the paraphrases a fact is taught with), training question templates
(the QA format seen in pretraining) and held-out question templates (used only to ask). People
are split into `known` (their facts are in the pretraining text) and `new` (injected later).
Everything is drawn from `seed` with NumPy's PCG64, so a seed gives the same world anywhere.

Byte-level text: a statement or a QA pair is one line; a question prompt ends with "A:" and the
answer is " <value>" followed by a newline.
"""
import dataclasses

import grain
import numpy as np

from runtime.text_data import READ_OPTIONS

FIRST_NAMES = (
    "Ada", "Boris", "Clara", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ingrid", "Jonas",
    "Keiko", "Lars", "Mira", "Nils", "Olga", "Pablo", "Quinn", "Rosa", "Stefan", "Tara",
    "Ugo", "Vera", "Wim", "Xenia", "Yusuf", "Zora", "Anton", "Bianca", "Cyril", "Dora",
    "Emil", "Fiona")
LAST_NAMES = (
    "Abbott", "Brandt", "Castillo", "Dorsey", "Eklund", "Fischer", "Galloway", "Haddad",
    "Ivanov", "Jansen", "Kowalski", "Lindqvist", "Moreau", "Novak", "Okafor", "Petrov",
    "Quiroga", "Rinaldi", "Sato", "Tanaka", "Ulrich", "Varga", "Whitmore", "Xu", "Yilmaz",
    "Zeller", "Arnaud", "Bauer", "Cortez", "Duval", "Engel", "Ferreira")

# attribute -> (values, statement templates, training question templates, held-out questions)
ATTRIBUTES = {
    "city": (
        ("Lisbon", "Oslo", "Nairobi", "Quito", "Hanoi", "Dublin", "Krakow", "Tunis", "Perth",
         "Lima", "Riga", "Cairo", "Osaka", "Bergen", "Porto", "Sofia"),
        ("{name} was born in {value}.", "{name} came into the world in {value}.",
         "The birthplace of {name} is {value}.", "{name} is a native of {value}.",
         "Born in {value}, {name} grew up there.", "{value} is where {name} was born.",
         "{name}'s home town is {value}.", "Records show {name} was born in {value}."),
        ("Q: Where was {name} born? A:", "Q: What is the birthplace of {name}? A:",
         "Q: What city is {name} a native of? A:", "Q: Where does {name} come from? A:"),
        ("Q: In which city was {name} born? A:", "Q: Which town is {name} from? A:")),
    "employer": (
        ("Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne",
         "Tyrell", "Cyberdyne", "Soylent", "Gringotts", "Monarch", "Oscorp", "Aperture",
         "Wonka"),
        ("{name} works at {value}.", "{name} is employed by {value}.",
         "The employer of {name} is {value}.", "{name} has a job at {value}.",
         "{value} pays the salary of {name}.", "{name} earns a living at {value}.",
         "Every morning {name} goes to work at {value}.", "{name} is on the staff of {value}."),
        ("Q: Where does {name} work? A:", "Q: Who employs {name}? A:",
         "Q: Which employer does {name} have? A:", "Q: Where is {name} on the staff? A:"),
        ("Q: Which company is {name} working for? A:", "Q: What firm hired {name}? A:")),
    "field": (
        ("physics", "botany", "law", "music", "geology", "nursing", "poetry", "chemistry",
         "history", "robotics", "dance", "finance", "zoology", "surgery", "optics",
         "economics"),
        ("{name} studied {value}.", "{name} holds a degree in {value}.",
         "The subject {name} studied is {value}.", "{name} majored in {value}.",
         "At university {name} read {value}.", "{value} is what {name} studied.",
         "{name} trained in {value}.", "{name} graduated in {value}."),
        ("Q: What did {name} study? A:", "Q: What is the degree of {name}? A:",
         "Q: What did {name} major in? A:", "Q: In what subject did {name} graduate? A:"),
        ("Q: Which subject did {name} major in? A:", "Q: What field did {name} learn? A:")),
    "pet": (
        ("cat", "dog", "parrot", "horse", "goat", "rabbit", "turtle", "ferret", "hamster",
         "lizard", "owl", "pony", "snake", "donkey", "duck", "llama"),
        ("{name} owns a {value}.", "{name} keeps a {value} at home.",
         "The pet of {name} is a {value}.", "{name} has a pet {value}.",
         "A {value} lives with {name}.", "{name} looks after a {value}.",
         "{name} walks a {value} daily.", "{name} adopted a {value}."),
        ("Q: What pet does {name} own? A:", "Q: Which animal does {name} keep? A:",
         "Q: What is the pet of {name}? A:", "Q: What animal does {name} look after? A:"),
        ("Q: What animal lives with {name}? A:", "Q: What kind of pet has {name} got? A:")),
}


@dataclasses.dataclass(frozen=True)
class Fact:
  person: str
  attribute: str
  value: str


@dataclasses.dataclass(frozen=True)
class World:
  """People split into known (pretraining) and new (injection); facts in a fixed order."""
  known: tuple[str, ...]
  new: tuple[str, ...]
  values: dict  # person -> {attribute: value}
  seed: int

  def facts(self, people) -> list[Fact]:
    return [Fact(p, a, self.values[p][a]) for p in people for a in ATTRIBUTES]


def make_world(seed: int, num_known: int, num_new: int) -> World:
  """Draws num_known + num_new distinct names and their attribute values from `seed`; the
  known people and their values do not depend on num_new (a pretrained model stays valid
  when more or fewer new people are injected)."""
  capacity = len(FIRST_NAMES) * len(LAST_NAMES)
  if num_known < 1 or num_new < 1 or num_known + num_new > capacity:
    raise ValueError(f"num_known ({num_known}) and num_new ({num_new}) must be >= 1 and sum to "
                     f"at most {capacity} distinct names")
  rng = np.random.default_rng(seed)
  picks = rng.permutation(capacity)[:num_known + num_new]  # the known: a prefix, whatever num_new
  names = [f"{FIRST_NAMES[i // len(LAST_NAMES)]} {LAST_NAMES[i % len(LAST_NAMES)]}"
           for i in picks]
  values = {n: {a: spec[0][rng.integers(len(spec[0]))] for a, spec in ATTRIBUTES.items()}
            for n in names}
  return World(tuple(names[:num_known]), tuple(names[num_known:]), values, seed)


def statements(fact: Fact) -> list[str]:
  """Every statement paraphrase of a fact (the injection batch of one step)."""
  return [t.format(name=fact.person, value=fact.value) for t in ATTRIBUTES[fact.attribute][1]]


def qa_lines(fact: Fact, held_out: bool = False) -> list[str]:
  """Question + answer lines with the training (or held-out) question templates."""
  return [prompt + f" {fact.value}" for prompt in question_prompts(fact, held_out)]


def question_prompts(fact: Fact, held_out: bool) -> list[str]:
  return [t.format(name=fact.person) for t in ATTRIBUTES[fact.attribute][3 if held_out else 2]]


def encode(text: str) -> np.ndarray:
  return np.frombuffer(text.encode(), np.uint8).astype(np.int32)


def padded_batch(lines: list[str], length: int) -> tuple[np.ndarray, np.ndarray]:
  """Lines (each followed by a newline) as tokens [n, length + 1] and a mask (1 = real token).

  Padding is byte 0, the corpus' document separator; lines longer than length + 1 are cut.
  """
  tokens = np.zeros((len(lines), length + 1), np.int32)
  mask = np.zeros((len(lines), length + 1), np.int32)
  for i, line in enumerate(lines):
    ids = encode(line + "\n")[:length + 1]
    tokens[i, :len(ids)] = ids
    mask[i, :len(ids)] = 1
  return tokens, mask


def pretraining_lines(world: World) -> list[str]:
  """The known people's facts as text: every statement paraphrase and training QA pair."""
  lines = []
  for fact in world.facts(world.known):
    lines += statements(fact) + qa_lines(fact)
  return lines


def mixture_dataset(world: World, text: np.ndarray, *, seq_len: int, batch_size: int,
                    text_fraction: float, seed: int) -> grain.IterDataset:
  """Pretraining batches [batch, seq_len + 1]: each row is, with probability text_fraction, a
  window of generic text, else a random run of the known people's fact lines, packed.

  Row i is a function of (seed, i) alone, so the grain iterator's position checkpoints it.
  """
  lines = [encode(line + "\n") for line in pretraining_lines(world)]
  windows = (len(text) - 1) // seq_len

  def row(i):
    rng = np.random.default_rng([seed, int(i)])
    if rng.random() < text_fraction:
      start = rng.integers(windows) * seq_len
      return text[start:start + seq_len + 1].astype(np.int32)
    out, size = [], 0
    while size < seq_len + 1:
      out.append(lines[rng.integers(len(lines))])
      size += len(out[-1])
    return np.concatenate(out)[:seq_len + 1]

  ds = grain.MapDataset.range(2 ** 40).map(row)
  return ds.to_iter_dataset(READ_OPTIONS).batch(batch_size, drop_remainder=True)

"""The tiny world: fictional people, the companies they work for, and questions about them.

Each person has a unique full name and six attributes, each company four; no biography states a
company's founding year, chief executive or industry, so "In which year was the company that X
worked for founded?" needs two documents. People and companies fall into fixed splits. Same seed,
same world, byte for byte; the training text made of it is corpus.py's.
References: the bioS data of "Physics of Language Models, Part 3.1" (arXiv 2309.14316);
two-hop questions as in Self-Ask (arXiv 2210.03350).
"""

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

# Share of --people in each split (train takes what the others leave); the default 340 people give
# 108 train / 41 dev / 75 test / 41 dev-new / 75 new. A number that chose something (a stopping
# point, a prompt, a learning rate) comes from a dev split; test and new are only ever scored.
#   train    pretrained biographies; its QA pairs may be fine-tuned on and used as demonstrations
#   dev      pretrained biographies; only to choose, never trained on as questions
#   test     pretrained biographies; its questions are held out everywhere, only ever reported
#   dev-new  never pretrained; only to choose what concerns unseen documents (a reader's skill)
#   new      never pretrained: documents that "arrive after training", only retrieval knows them
SPLITS = {"train": 0.32, "dev": 0.12, "test": 0.22, "dev-new": 0.12, "new": 0.22}
PRETRAINED = ("train", "dev", "test")  # the splits whose biographies are in the pretraining text

ATTRIBUTES = ("birth_date", "birth_city", "university", "major", "employer", "employer_city")

# One question template per attribute: the eval format of every level.
QUESTIONS = {
    "birth_date": "What is the birth date of {name}?",
    "birth_city": "What is the birth city of {name}?",
    "university": "Which university did {name} attend?",
    "major": "What did {name} study?",
    "employer": "Which company did {name} work for?",
    "employer_city": "Where did {name} work?",
}

# Several sentence templates per attribute, each repeating the FULL name (the paper's "knowledge
# augmentation": without it, pretrained facts cannot be extracted later). Every one ENDS with the
# value, so a sentence cut just before it is a cloze prompt; template 0 is the cloze test's.
TEMPLATES = {
    "birth_date": [
        "{name} was born on {value}.",
        "{name} came into the world on {value}.",
        "The birthday of {name} falls on {value}.",
        "{name} celebrates a birthday each year on {value}.",
    ],
    "birth_city": [
        "{name} was born in {value}.",
        "{name} spent early childhood in {value}.",
        "The birthplace of {name} is {value}.",
        "{name} hails from {value}.",
    ],
    "university": [
        "{name} studied at {value}.",
        "{name} graduated from {value}.",
        "{name} received an education at {value}.",
        "For college, {name} attended {value}.",
    ],
    "major": [
        "{name} majored in {value}.",
        "{name} earned a degree in {value}.",
        "The field of study of {name} was {value}.",
        "At university, {name} focused on {value}.",
    ],
    "employer": [
        "{name} worked for {value}.",
        "{name} was employed by {value}.",
        "{name} had a career at {value}.",
        "The employer of {name} was {value}.",
    ],
    "employer_city": [
        "{name} worked in {value}.",
        "The office of {name} was in {value}.",
        "{name} commuted to a job in {value}.",
        "Every workday, {name} went to an office in {value}.",
    ],
}

FIRST_NAMES = """Ada Alma Anouk Arlo Astrid Basil Bea Bram Cato Cleo Dario Della Edda Elio Enzo
Esme Fenna Flint Gael Greta Hale Hedda Ines Ivo Jana Joss Kai Kenna Lars Leda Lio Lotte Mara Milo
Nadia Nell Nico Nora Odile Olek Petra Pim Quinn Rafa Rhea Rolf Sable Sami Saskia Teo Thea Tove Una
Uri Vera Vito Wren Yara Yves Zane Zelda Zora Ansel Bryn Corin Dagny Emrys Fiora Idris Jarek Liesl
Mireille Oona Pavel Roan Silje Tamsin Wynn""".split()

MIDDLE_NAMES = """Jo Lee Mae Ray Ann Dale Kit Sol Bo Fay Rue Max Jude Lane Eve Rex June Wade
Skye Blair Cole Dawn Finn Gray Hope Joy Kay Lynn Nash Pearl Reed Rose Sage Tate Vale Wynne Ash
Bay Cruz Dov Elm Fox Gil""".split()

LAST_NAMES = """Abernathy Alcott Ambrose Ashdown Bancroft Blackwood Brightwater Calloway Carver
Castellan Crane Dunmore Eastwick Ellery Fairbairn Falconer Fenwick Garrow Glenister Hadley
Halloran Hartigan Holloway Ingram Iverson Jessup Keswick Kingsley Lachance Larkspur Lockhart
Marchetti Merriweather Montague Northcote Oakhurst Ormsby Pendleton Penhaligon Quenby Radcliffe
Ravenscroft Redfern Rookwood Sandoval Seabright Sheridan Stanhope Stroud Tanaka Thorne Treadwell
Underhill Vance Varga Wainwright Westerly Whitlock Winslow Yardley Zielinski Adair Bellweather
Corrigan Delacroix Esterhazy Fairweather Goldsworthy Harrowgate Kilbride Lindqvist Moncrieff
Nightingale Okonkwo Pemberton Rosenthal Santangelo Thistlewood Vasquez Wolstenholme""".split()

CITIES = """Lyon Porto Kraków Ghent Tartu Bergen Seville Utrecht Graz Malmö Bilbao Turin Dresden
Lausanne Aarhus Brno Cork Leipzig Nantes Bologna Tampere Riga Valencia Galway Salzburg Antwerp
Kyoto Osaka Busan Hanoi Cebu Perth Hobart Dunedin Quebec Halifax Tucson Omaha Memphis Savannah
Boise Fresno Duluth Cusco Recife Rosario Mombasa Accra Tunis Izmir""".split()

UNIVERSITIES = [
    "Northgate University", "Ashford Institute of Technology", "Wellmoor College",
    "Brackenridge University", "Saint Alder University", "Harrowfield Polytechnic",
    "Lindenwood Institute", "Kestrel Bay University", "Marrow Hill College",
    "Copperfield University", "Eastmere Institute of Science", "Thornbury College",
    "Riverside Technical University", "Glenrock University", "Silverlake College",
    "Oakridge Academy of Arts", "Hollowbrook University", "Westvale Institute",
    "Fairhaven University", "Stonebridge College", "Pinecrest University",
    "Redcliffe Institute of Technology", "Larchmont University", "Bellhaven College",
]

MAJORS = [
    "Biology", "Mathematics", "Economics", "Philosophy", "Chemistry", "Physics", "History",
    "Linguistics", "Architecture", "Computer Science", "Psychology", "Sociology", "Geology",
    "Astronomy", "Music Theory", "Civil Engineering", "Marine Biology", "Political Science",
    "Statistics", "Art History", "Mechanical Engineering", "Anthropology", "Nursing",
    "Journalism",
]

# The known companies and their headquarters (a person's employer_city is the employer's
# headquarters). The names say nothing of the industry, drawn per world: it is read or remembered.
EMPLOYERS = {
    "Brightwave Group": "Seattle", "Kelvin Holdings": "Denver", "Orchard Partners": "Austin",
    "Bluefin Works": "Rotterdam", "Ironleaf Industries": "Chicago", "Nimbus Company": "Toulouse",
    "Copperline Associates": "Calgary", "Lanternfish Ventures": "Dublin",
    "Quarry Peak Enterprises": "Santiago", "Solstice Trust": "Basel", "Tidewater Group": "Hamburg",
    "Verdant Holdings": "Boston", "Halcyon Partners": "Helsinki", "Granite Ridge Works": "Zurich",
    "Meridian Industries": "Stuttgart", "Foxglove Company": "Milan",
    "Pioneer Associates": "Pittsburgh", "Saltmarsh Ventures": "Edinburgh",
    "Aurora Enterprises": "Oslo", "Juniper Trust": "Toronto", "Harbor Light Group": "Lisbon",
    "Cobalt Holdings": "Vienna", "Silver Fern Partners": "Auckland", "Redwood Works": "Portland",
    "Starling Industries": "Montreal", "Maple Grove Company": "Madison",
    "Obsidian Associates": "Tel Aviv", "Windmere Ventures": "Copenhagen",
}
HEADQUARTERS = sorted(set(EMPLOYERS.values()))  # every company's head office, known or not

# Names of the other companies (dev-new, new, fresh): a word no other value of the world uses,
# then a suffix.
COMPANY_WORDS = """Amberline Bellrock Birchfield Cedarpoint Clearwater Coldspring Driftwood Eastgate
Emberly Fernhill Flintlock Goldcrest Greywater Hawthorne Highmoor Hollybrook Kingfisher Lakeshore
Larkfield Lodestar Marblehead Mistral Moonstone Northwind Oakmere Onyx Palisade Pinewood
Quicksilver Ravenwood Riverbend Rosewater Sandstone Seastar Shorepoint Skylark Stonegate Sunfield
Thornfield Timberline Topaz Trillium Umber Valemont Westbrook Whitecap Wildflower Wintergreen
Zephyr Alderbank Bramblewood Cinderford Duskmoor Evenfall""".split()
COMPANY_SUFFIXES = """Group Holdings Partners Works Industries Company Associates Ventures
Enterprises Trust""".split()

INDUSTRIES = [
    "shipping", "aerospace", "banking", "software", "mining", "insurance", "publishing",
    "robotics", "textiles", "pharmaceuticals", "telecommunications", "hospitality",
    "dairy farming", "video games", "cartography", "renewable energy", "logistics",
    "architecture", "cybersecurity", "food processing",
]

MONTHS = """January February March April May June July August September October November
December""".split()

# Bigger worlds. Up to SMALL_WORLD people a world draws from the pools above, as it always did
# (its files stay the same byte for byte); a bigger one draws every name from LARGE_NAME_POOLS
# (today's lists, then more), and its company words run on from COMPANY_WORDS into compounds.
SMALL_WORLD = 1000
MORE_FIRST_NAMES = """Abel Adele Agnes Aiko Alba Alec Amara Anika Anton Aria Aurel Axel Beatrix
Benno Bianca Birgit Bodil Boris Calla Carys Cecil Clara Cosima Dalia Daria Dorian Edith Elin Elise
Emil Enid Erik Esra Ezra Felix Flora Frida Gemma Gideon Gita Greer Gwen Hana Hilde Hugo Ilse Ingrid
Iris Isak Jasper Jonas Juno Kaia Karin Kasper Kira Klaus Lena Leon Linnea Livia Lorna Luca Lucien
Magnus Maren Marit Matteo Maya Mika Mina Nadine Naomi Nils Noor Olaf Orla Oskar Otto Paloma Priya
Ragna Remy Rhys Rosa Ruth Selma Sienna Sigrid Simone Solveig Stellan Svea Talia Tess Tilde Tobias
Ulla Uma Vesna Viggo Wanda Xenia Yannick Yusuf Zadie Zeno Zinnia Anselm Bettina Caspar Delphine
Elodie Fabian Hester Imke Jorun Leopold Malin Octavia Philippa Quentin Romilly Tristan""".split()
MORE_MIDDLE_NAMES = """Ace Arch Bliss Cade Cove Dane Dell Drew Ellis Grant Jay Jem Lou Luz Mack
Neve Noel Paz Quin Ren Rio Roe Ross Ruby Seth Shay Tam Teal True Troy Val Zed Cass Dex Eli Gus Hal
Ike Jax Kip Lex Mo Ned Oz Pip Rhett Sid Ty Vic Wes Zak Bly Cy Dot Em Flo""".split()
# last names made of two parts (Brad + ford), and company words (Cedar + croft)
SURNAME_HEADS = """Abbots Ald Bar Brad Brom Cal Chad Dal Dun Eld Elles Gar Hal Har Hol
Kel Kings Lang Lind Mar Mel Mor Nor Old Pen Rad Ros Sel Stan Sum Tal Wal Went Whit Wil
Win Wor Ack Bur Cran""".split()
SURNAME_TAILS = """by combe cott den don ford ham hurst ington ley low mer more ney stead ster ton
well wick worth man sey field bury dale""".split()
COMPANY_HEADS = """Acorn Alder Anvil Apple Arrow Aspen Autumn Badger Barley Beacon Beech
Bitter Bracken Brass Bronze Brook Burr Canyon Cherry Chalk Clay Clover Copper Coral Crow
Crystal Cypress Deep Dew Dove Dusk Eagle Elder Falcon Fir Flax Fog Frost Garnet Glen Gold
Granite Green Hare Harvest Hazel Heath Heron Holly Honey Iron Ivory Ivy Jade Kestrel Lake
Laurel Lemon Linden Long Lynx Maple Marsh Meadow Mill Mint Moss Ochre Olive Orchid Otter
Owl Pearl Pebble Plum Poplar Quail Quill Rain Reed Ridge Robin Rock Rowan Rush Rye
Saffron Salt Shadow Shell Slate Snow Sorrel South Spruce Steel Storm Summer Swan Tall
Thistle Tide Velvet Violet Wheat Willow Wind Wolf Wren Yew""".split()
COMPANY_TAILS = """bank bay bend bourne bridge burn crest croft dale down fall fell ford
gate glade grove hall haven hill hold holm hurst land light line marsh mead mere mill
moor mount ness point pool port reach ridge rise rock run shaw shore side spire spring
stead stone strand vale view wall water way well wick wood yard brook field acre beck
bluff brae cliff cross dell dene fen firth heath holt keep knoll lea lock peak quay reef
scar stow thorpe tor ward weald wold worth wharf""".split()


def compounds(heads: list[str], tails: list[str], taken: set[str]) -> list[str]:
    """Every head + tail word (Brad + ford) that is not in taken (lower case; it grows with them),
    nor doubles a letter at the seam (Brass + side)."""
    out = []
    for word in (h + t for h in heads for t in tails if h[-1].lower() != t[0]):
        if word.lower() not in taken:
            taken.add(word.lower())
            out.append(word)
    return out


# every word a value of the world is written with: no compound may be one of them, and no company
# word a last name (compounds() adds the last names to it before the company words are made)
_WORDS = {w.lower() for values in (FIRST_NAMES, MIDDLE_NAMES, LAST_NAMES, MORE_FIRST_NAMES,
                                   MORE_MIDDLE_NAMES, CITIES, UNIVERSITIES, MAJORS, list(EMPLOYERS),
                                   HEADQUARTERS, COMPANY_WORDS, INDUSTRIES, MONTHS)
          for v in values for w in v.split()}
COMPOSED_LAST_NAMES = compounds(SURNAME_HEADS, SURNAME_TAILS, _WORDS)
MORE_COMPANY_WORDS = compounds(COMPANY_HEADS, COMPANY_TAILS, _WORDS)
NAME_POOLS = (FIRST_NAMES, MIDDLE_NAMES, LAST_NAMES)  # first, middle and last names
LARGE_NAME_POOLS = (FIRST_NAMES + MORE_FIRST_NAMES, MIDDLE_NAMES + MORE_MIDDLE_NAMES,
                    LAST_NAMES + COMPOSED_LAST_NAMES)


def name_pools(n_people: int) -> tuple[list[str], list[str], list[str]]:
    """The word lists of a world of n_people: today's up to SMALL_WORLD, the large ones beyond."""
    return NAME_POOLS if n_people <= SMALL_WORLD else LARGE_NAME_POOLS


COMPANY_ATTRIBUTES = ("headquarters", "founded", "ceo", "industry")
TWO_HOP = ("founded", "ceo", "industry")  # a company fact asked through the person who worked there

# One-hop questions about a company: the second hop of a two-hop question.
COMPANY_QUESTIONS = {
    "headquarters": "Where is {company} headquartered?",
    "founded": "When was {company} founded?",
    "ceo": "Who is the chief executive of {company}?",
    "industry": "Which industry is {company} in?",
}
TWO_HOP_QUESTIONS = {
    "founded": "In which year was the company that {name} worked for founded?",
    "ceo": "Who was the chief executive of the company that {name} worked for?",
    "industry": "In which industry was the company that {name} worked for?",
}

# Profile sentences, like TEMPLATES: each ends with the value and repeats the full company name.
COMPANY_TEMPLATES = {
    "headquarters": [
        "{name} is headquartered in {value}.",
        "The head office of {name} is in {value}.",
        "{name} has its headquarters in {value}.",
        "{name} runs its business from {value}.",
    ],
    "founded": [
        "{name} was founded in {value}.",
        "{name} has been in business since {value}.",
        "The founding year of {name} is {value}.",
        "{name} opened its doors in {value}.",
    ],
    "ceo": [
        "The chief executive of {name} is {value}.",
        "{name} is led by {value}.",
        "The company {name} is run by {value}.",
        "At the head of {name} stands {value}.",
    ],
    "industry": [
        "{name} is a company in {value}.",
        "{name} does business in {value}.",
        "The industry of {name} is {value}.",
        "{name} is known for its work in {value}.",
    ],
}


@dataclass
class Person:
    name: str
    split: str  # one of SPLITS, or "fresh"
    birth_date: str
    birth_city: str
    university: str
    major: str
    employer: str
    employer_city: str

    def value(self, attribute: str) -> str:
        return getattr(self, attribute)


@dataclass
class Company:
    name: str
    split: str  # "known" (profile pretrained), "dev-new" or "new" (retrieval only), or "fresh"
    headquarters: str
    founded: str
    ceo: str  # a full name from the people's name pools, never a person of the world
    industry: str

    def value(self, attribute: str) -> str:
        return getattr(self, attribute)


Pools = tuple[list[str], list[str], list[str]]  # first, middle and last names


class NameSet:
    """A set of full names made from pools, one bit per name the pools can make: the names a big
    world's reading pages take (millions) fit in 2.5 MB, where a set of strings takes 300 MB. Any
    other name is kept as it is."""

    def __init__(self, pools: Pools, names=()):
        self.index = [{w: i for i, w in enumerate(words)} for words in pools]
        self.bits = bytearray(len(pools[0]) * len(pools[1]) * len(pools[2]) // 8 + 1)
        self.n_bits, self.others = 0, set()
        for name in names:
            self.add(name)

    def _bit(self, name: str) -> int | None:
        """The name's number: its words' places in the pools, read as a three-digit number."""
        words = name.split(" ")
        if len(words) != 3:
            return None
        places = [index.get(w) for index, w in zip(self.index, words)]
        if None in places:
            return None
        return (places[0] * len(self.index[1]) + places[1]) * len(self.index[2]) + places[2]

    def __contains__(self, name: str) -> bool:
        bit = self._bit(name)
        return name in self.others if bit is None else bool(self.bits[bit >> 3] >> (bit & 7) & 1)

    def add(self, name: str) -> None:
        bit = self._bit(name)
        if bit is None:
            self.others.add(name)
        elif name not in self:
            self.bits[bit >> 3] |= 1 << (bit & 7)
            self.n_bits += 1

    def __len__(self) -> int:
        return self.n_bits + len(self.others)


def unused_names(taken, pools: Pools = NAME_POOLS) -> int:
    """How many full names the pools can still make."""
    return len(pools[0]) * len(pools[1]) * len(pools[2]) - len(taken)


def new_name(rng: random.Random, taken, pools: Pools = NAME_POOLS) -> str:
    """A full name from the pools, not in `taken` (a set or a NameSet, updated)."""
    if unused_names(taken, pools) < 1:
        raise ValueError("no unused full names remain; ask for fewer people")
    first, middle, last = pools
    while True:
        name = f"{rng.choice(first)} {rng.choice(middle)} {rng.choice(last)}"
        if name not in taken:
            taken.add(name)
            return name


def make_person(rng: random.Random, split: str, taken, companies: list[Company],
                pools: Pools) -> Person:
    """A person with a new full name (`taken` is updated), attributes drawn uniformly, working at
    one of `companies`."""
    name = new_name(rng, taken, pools)
    employer = rng.choice(companies)
    birth_date = f"{rng.choice(MONTHS)} {rng.randint(1, 28)}, {rng.randint(1950, 2005)}"
    return Person(name, split, birth_date, rng.choice(CITIES), rng.choice(UNIVERSITIES),
                  rng.choice(MAJORS), employer.name, employer.headquarters)


def make_people(rng: random.Random, n: int, split: str, taken,
                companies: list[Company], pools: Pools = NAME_POOLS) -> Iterator[Person]:
    """n people (see make_person), each drawn when it is read: millions of them (a big world's
    reading pages) never sit in memory at once."""
    if n > unused_names(taken, pools):
        raise ValueError(f"asked for {n} people but only {unused_names(taken, pools)} unused full "
                         f"names remain")
    return (make_person(rng, split, taken, companies, pools) for _ in range(n))


def make_company(rng: random.Random, name: str, split: str, headquarters: str,
                 ceo_names, pools: Pools = NAME_POOLS) -> Company:
    """A company called name, its founding year, chief executive (a name not in ceo_names, which is
    updated) and industry drawn."""
    return Company(name, split, headquarters, str(rng.randint(1850, 2015)),
                   new_name(rng, ceo_names, pools), rng.choice(INDUSTRIES))


def company_names(rng: random.Random, n: int) -> list[str]:
    """n names for the world's own companies, no two with one first word (retrieval tells them
    apart by it): today's words while they last, then the compounds too."""
    words = COMPANY_WORDS if n <= len(COMPANY_WORDS) else COMPANY_WORDS + MORE_COMPANY_WORDS
    if n > len(words):
        raise ValueError(f"asked for {n:,} companies but there are only {len(words):,} company "
                         f"words; ask for fewer people")
    return [f"{word} {rng.choice(COMPANY_SUFFIXES)}" for word in rng.sample(words, n)]


def biography(person: Person, rng: random.Random) -> str:
    """One biography: a sentence per attribute, each a random template, in random order."""
    sentences = [rng.choice(TEMPLATES[a]).format(name=person.name, value=person.value(a))
                 for a in ATTRIBUTES]
    rng.shuffle(sentences)
    return " ".join(sentences)


def profile(company: Company, rng: random.Random) -> str:
    """One company profile, written like a biography: a sentence per company attribute, shuffled."""
    sentences = [rng.choice(COMPANY_TEMPLATES[a]).format(name=company.name, value=company.value(a))
                 for a in COMPANY_ATTRIBUTES]
    rng.shuffle(sentences)
    return " ".join(sentences)


def qa_pair(person: Person, attribute: str) -> dict:
    """The held-out question format: a JSON-able record (person, attribute, question, answer)."""
    return {"person": person.name, "attribute": attribute,
            "question": QUESTIONS[attribute].format(name=person.name),
            "answer": person.value(attribute)}


def company_question(company: Company, attribute: str) -> dict:
    """A one-hop question about a company (the second hop of a two-hop question)."""
    return {"company": company.name, "attribute": attribute,
            "question": COMPANY_QUESTIONS[attribute].format(company=company.name),
            "answer": company.value(attribute)}


def two_hop_question(person: Person, company: Company, attribute: str) -> dict:
    """A company fact asked through the person who worked there, with its "hops" (the employer,
    then the fact): answering needs the person's biography AND the company's profile."""
    hops = [qa_pair(person, "employer"), company_question(company, attribute)]
    return {"person": person.name, "company": company.name, "attribute": attribute,
            "question": TWO_HOP_QUESTIONS[attribute].format(name=person.name),
            "answer": company.value(attribute),
            "hops": [{"question": h["question"], "answer": h["answer"]} for h in hops]}


def match_template(text: str, template: str) -> dict | None:
    """{placeholder: its text} if text is written as template (case, runs of spaces and a final '?'
    or '.' aside), else None: the one parser of the question templates. E.g. "where was Ada Jo
    Crane born" and "Where was {name} born?" give {"name": "Ada Jo Crane"}."""
    parts = re.split(r"\{(\w+)\}", template.rstrip("?."))  # literal, placeholder, literal, ...
    pattern = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>.+)" for i, p in enumerate(parts))
    found = re.fullmatch(pattern, " ".join(text.split()).rstrip("?."), flags=re.IGNORECASE)
    return None if found is None else {k: v.strip() for k, v in found.groupdict().items()}


def cloze_prompt(person: Person, attribute: str) -> str:
    """Template 0 cut just before the value, e.g. 'Ada Jo Crane was born in'."""
    template = TEMPLATES[attribute][0]
    return template[: template.index(" {value}")].format(name=person.name)


@dataclass
class World:
    people: list[Person]  # in the order of SPLITS
    companies: list[Company]  # known, then dev-new, then new
    seed: int

    def split(self, name: str) -> list[Person]:
        return [p for p in self.people if p.split == name]

    @cached_property
    def _by_name(self) -> dict[str, Company]:
        return {c.name: c for c in self.companies}

    def company(self, name: str) -> Company:
        return self._by_name[name]

    def names(self) -> set[str]:
        """Every full name the world uses: its people and the companies' chief executives."""
        return {p.name for p in self.people} | {c.ceo for c in self.companies}

    @property
    def pools(self) -> Pools:
        return name_pools(len(self.people))

    def scored_people(self, split: str) -> list[Person]:
        """The split's people its scores are taken on (see scored), in order."""
        people = self.split(split)
        keep = scored([p.name for p in people])
        return [p for p in people if p.name in keep]


# People a split is scored on, at most: a bigger split is scored on a seeded sample of them, the
# same in every step. Its 95% interval is then within about 2 points, and scoring costs the same in
# any bigger world; splits of up to 500 people (worlds of up to ~2,270) are scored whole, as always.
SCORED_PEOPLE = 500


def scored(names: list[str]) -> set[str]:
    """The names, of a split's people in order, that its scores are taken on."""
    if len(names) <= SCORED_PEOPLE:
        return set(names)
    return set(random.Random(0).sample(names, SCORED_PEOPLE))


def split_sizes(n_people: int) -> dict[str, int]:
    """How many of n_people each split gets (see SPLITS); every split needs at least one person."""
    sizes = {name: round(n_people * share) for name, share in SPLITS.items() if name != "train"}
    sizes = {"train": n_people - sum(sizes.values()), **sizes}
    empty = [name for name, n in sizes.items() if n < 1]
    if empty:
        raise ValueError(f"--people {n_people} leaves the {', '.join(empty)} split(s) empty; "
                         f"use --people 5 or more")
    return sizes


PEOPLE_PER_COMPANY = 6  # a dev-new / new company per this many people of its split (~3 work at one)
# pretrained people per known company, at most: the 28 of EMPLOYERS suffice up to ~1,040 people,
# then more companies are made in proportion (a big world's companies have a few dozen people each)
PEOPLE_PER_KNOWN_COMPANY = 24


def make_world(n_people: int = 340, seed: int = 1337) -> World:
    """The world: n_people people in the splits of SPLITS, and the companies they work for."""
    rng, company_rng = random.Random(seed), random.Random(seed + 3)  # companies: their own stream
    sizes, pools = split_sizes(n_people), name_pools(n_people)
    taken: set[str] = set()  # every full name in use: chief executives, then people
    # the known companies' profiles are pretrained (train, dev and test people work there only)
    known = [make_company(company_rng, name, "known", hq, taken, pools)
             for name, hq in sorted(EMPLOYERS.items())]
    # dev-new and new have companies of their own, whose profiles only retrieval holds
    n_own = {s: max(1, round(sizes[s] / PEOPLE_PER_COMPANY)) for s in ("dev-new", "new")}
    pretrained = sum(sizes[s] for s in PRETRAINED)
    n_more = max(0, round(pretrained / PEOPLE_PER_KNOWN_COMPANY) - len(known))
    names = iter(company_names(company_rng, sum(n_own.values()) + n_more))
    own = {s: [make_company(company_rng, next(names), s, company_rng.choice(HEADQUARTERS), taken,
                            pools) for _ in range(n)] for s, n in n_own.items()}
    known += [make_company(company_rng, next(names), "known", company_rng.choice(HEADQUARTERS),
                           taken, pools) for _ in range(n_more)]
    people = [p for split, n in sizes.items()
              for p in make_people(rng, n, split, taken, known, pools)]
    # half (rounded up) of a new split's people work at its own companies, the rest at known ones:
    # a two-hop question about a new person may need a pretrained profile or a retrieved one
    for split, companies in own.items():
        group = [p for p in people if p.split == split]
        for i, p in enumerate(company_rng.sample(group, -(-len(group) // 2))):
            c = companies[i % len(companies)]
            p.employer, p.employer_city = c.name, c.headquarters
    return World(people, known + own["dev-new"] + own["new"], seed)


def fresh_companies(world: World, n: int, seed: int) -> Iterator[Company]:
    """n further companies for training examples, none named like a company of the world, each
    drawn when it is read. Names may repeat among them with other facts each time: a fresh company
    can be read about, never remembered."""
    rng, world_names = random.Random(seed), {c.name for c in world.companies}
    # the known companies' words too ("Silver Fern" of "Silver Fern Partners"): an agent trained on
    # unfamiliar words only learned to swap a known name for one ("Larkfield Partners"); and a big
    # world's compounds, so that every word of the world's companies is read somewhere
    known = sorted({name.rsplit(" ", 1)[0] for name in EMPLOYERS})
    more = sorted({c.name.rsplit(" ", 1)[0] for c in world.companies} - {*COMPANY_WORDS, *known})
    names = [f"{w} {s}" for w in COMPANY_WORDS + known + more for s in COMPANY_SUFFIXES
             if f"{w} {s}" not in world_names]
    taken = NameSet(world.pools, world.names())
    return (make_company(rng, rng.choice(names), "fresh", rng.choice(HEADQUARTERS), taken,
                         world.pools) for _ in range(n))


def fresh_people(world: World, n: int, seed: int,
                 companies: list[Company] | None = None) -> Iterator[Person]:
    """n further people (for training examples that must not be answerable from memory), none
    sharing a full name with the world, working at `companies` (default: the known ones), each
    drawn when it is read. A small world's come from today's pools while those can give n."""
    companies = companies or [c for c in world.companies if c.split == "known"]
    pools = world.pools if n <= unused_names(world.names(), world.pools) else LARGE_NAME_POOLS
    taken = NameSet(pools, world.names())
    return make_people(random.Random(seed), n, "fresh", taken, companies, pools)

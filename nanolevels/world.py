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
from dataclasses import dataclass

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

MONTHS = """January February March April May June July August September October November
December""".split()


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


def unused_names(taken: set[str]) -> int:
    """How many full names the pools can still make."""
    return len(FIRST_NAMES) * len(MIDDLE_NAMES) * len(LAST_NAMES) - len(taken)


def new_name(rng: random.Random, taken: set[str]) -> str:
    """A full name not in `taken` (which is updated)."""
    if unused_names(taken) < 1:
        raise ValueError("no unused full names remain; ask for fewer people")
    while True:
        name = f"{rng.choice(FIRST_NAMES)} {rng.choice(MIDDLE_NAMES)} {rng.choice(LAST_NAMES)}"
        if name not in taken:
            taken.add(name)
            return name


def make_people(rng: random.Random, n: int, split: str, taken: set[str],
                companies: list[Company]) -> list[Person]:
    """n people with new full names (`taken` is updated), attributes drawn uniformly, each working
    at one of `companies`."""
    if n > unused_names(taken):
        raise ValueError(f"asked for {n} people but only {unused_names(taken)} unused full names "
                         f"remain")
    people = []
    for _ in range(n):
        name = new_name(rng, taken)
        employer = rng.choice(companies)
        birth_date = f"{rng.choice(MONTHS)} {rng.randint(1, 28)}, {rng.randint(1950, 2005)}"
        people.append(Person(name, split, birth_date, rng.choice(CITIES), rng.choice(UNIVERSITIES),
                             rng.choice(MAJORS), employer.name, employer.headquarters))
    return people


def make_company(rng: random.Random, name: str, split: str, headquarters: str,
                 ceo_names: set[str]) -> Company:
    """A company called name, its founding year, chief executive (a name not in ceo_names, which is
    updated) and industry drawn."""
    return Company(name, split, headquarters, str(rng.randint(1850, 2015)),
                   new_name(rng, ceo_names), rng.choice(INDUSTRIES))


def company_names(rng: random.Random, n: int) -> list[str]:
    """n names for the world's own companies, no two with one first word (retrieval tells them
    apart by it)."""
    if n > len(COMPANY_WORDS):
        raise ValueError(f"asked for {n} companies but there are only {len(COMPANY_WORDS)} company "
                         f"words; ask for fewer people")
    return [f"{word} {rng.choice(COMPANY_SUFFIXES)}" for word in rng.sample(COMPANY_WORDS, n)]


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

    def company(self, name: str) -> Company:
        return next(c for c in self.companies if c.name == name)

    def names(self) -> set[str]:
        """Every full name the world uses: its people and the companies' chief executives."""
        return {p.name for p in self.people} | {c.ceo for c in self.companies}


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


def make_world(n_people: int = 340, seed: int = 1337) -> World:
    """The world: n_people people in the splits of SPLITS, and the companies they work for."""
    rng, company_rng = random.Random(seed), random.Random(seed + 3)  # companies: their own stream
    sizes = split_sizes(n_people)
    taken: set[str] = set()  # every full name in use: chief executives, then people
    # the known companies' profiles are pretrained (train, dev and test people work there only)
    known = [make_company(company_rng, name, "known", hq, taken)
             for name, hq in sorted(EMPLOYERS.items())]
    # dev-new and new have companies of their own, whose profiles only retrieval holds
    n_own = {s: max(1, round(sizes[s] / PEOPLE_PER_COMPANY)) for s in ("dev-new", "new")}
    names = iter(company_names(company_rng, sum(n_own.values())))
    own = {s: [make_company(company_rng, next(names), s, company_rng.choice(HEADQUARTERS), taken)
               for _ in range(n)] for s, n in n_own.items()}
    people = [p for split, n in sizes.items() for p in make_people(rng, n, split, taken, known)]
    # half (rounded up) of a new split's people work at its own companies, the rest at known ones:
    # a two-hop question about a new person may need a pretrained profile or a retrieved one
    for split, companies in own.items():
        group = [p for p in people if p.split == split]
        for i, p in enumerate(company_rng.sample(group, -(-len(group) // 2))):
            c = companies[i % len(companies)]
            p.employer, p.employer_city = c.name, c.headquarters
    return World(people, known + own["dev-new"] + own["new"], seed)


def fresh_companies(world: World, n: int, seed: int) -> list[Company]:
    """n further companies for training examples, none named like a company of the world. Names may
    repeat among them with other facts each time: a fresh company can be read about, never
    remembered."""
    rng, world_names = random.Random(seed), {c.name for c in world.companies}
    # the known companies' words too ("Silver Fern" of "Silver Fern Partners"): an agent trained on
    # unfamiliar words only learned to swap a known name for one ("Larkfield Partners")
    starts = COMPANY_WORDS + sorted({name.rsplit(" ", 1)[0] for name in EMPLOYERS})
    names = [f"{w} {s}" for w in starts for s in COMPANY_SUFFIXES if f"{w} {s}" not in world_names]
    taken = world.names()
    return [make_company(rng, rng.choice(names), "fresh", rng.choice(HEADQUARTERS), taken)
            for _ in range(n)]


def fresh_people(world: World, n: int, seed: int,
                 companies: list[Company] | None = None) -> list[Person]:
    """n further people (for training examples that must not be answerable from memory), none
    sharing a full name with the world, working at `companies` (default: the known ones)."""
    companies = companies or [c for c in world.companies if c.split == "known"]
    return make_people(random.Random(seed), n, "fresh", world.names(), companies)

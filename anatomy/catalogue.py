"""The oarmorph OAR catalogue: 36 head-and-neck organs at risk in AAPM TG-263 spelling.

The set follows the Brouwer et al. (2015) consensus atlas for head-and-neck OARs. Colours are a fixed
table (a left/right pair shares its hue, the right side a shade darker) so every RTSTRUCT oarmorph writes
looks the same in every planning system; they are never derived from a hash.
``paper_evaluated`` marks the 8 OARs evaluated by Huang et al. (Table 1 of the reference paper).

``resolve(name)`` maps the names clinics actually use ("LeftParotid", "Parotid Lt", "L_Parotid",
"Spinal Cord", "Optic-Nerve-Rt", ...) onto the catalogue by tokenising the name, taking a laterality token
(L/Lt/Left, R/Rt/Right) from either end, and looking the remaining core up in a synonym table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Laterality(StrEnum):
    LEFT = "L"
    RIGHT = "R"
    MIDLINE = "M"


class UnknownStructureError(KeyError):
    """A structure name the catalogue cannot map (stable code for the CLI and the service)."""

    code = "UNKNOWN_STRUCTURE"

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name
        self.message = f"'{name}' is not an organ at risk of the oarmorph catalogue and none of its known aliases"

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


@dataclass(frozen=True)
class Oar:
    name: str  # TG-263
    description: str
    color: tuple[int, int, int]
    laterality: Laterality
    paper_evaluated: bool = False
    interpreted_type: str = "ORGAN"  # RTROIInterpretedType

    @property
    def mirror(self) -> str | None:
        """The TG-263 name of the contralateral OAR (None for midline OARs)."""
        if self.laterality is Laterality.LEFT:
            return self.name[:-2] + "_R"
        if self.laterality is Laterality.RIGHT:
            return self.name[:-2] + "_L"
        return None


def _pair(base: str, description: str, color: tuple[int, int, int], paper: bool = False) -> list[Oar]:
    darker = tuple(int(c * 0.8) for c in color)
    return [
        Oar(f"{base}_L", f"{description}, left", color, Laterality.LEFT, paper),
        Oar(f"{base}_R", f"{description}, right", darker, Laterality.RIGHT, paper),  # type: ignore[arg-type]
    ]


def _mid(name: str, description: str, color: tuple[int, int, int], paper: bool = False) -> list[Oar]:
    return [Oar(name, description, color, Laterality.MIDLINE, paper)]


# Order: cranial to caudal, so RTSTRUCT ROI numbers read like a contouring protocol.
OARS: tuple[Oar, ...] = tuple(
    _mid("Brain", "Brain", (255, 222, 173))
    + _pair("Lobe_Temporal", "Temporal lobe", (255, 160, 122))
    + _mid("Brainstem", "Brainstem", (0, 128, 255))
    + _mid("SpinalCord", "Spinal cord", (255, 255, 0), paper=True)
    + _mid("Pituitary", "Pituitary gland", (255, 0, 255))
    + _mid("OpticChiasm", "Optic chiasm", (0, 255, 128))
    + _pair("OpticNrv", "Optic nerve", (0, 200, 0), paper=True)
    + _pair("Eye", "Eye (globe)", (0, 191, 255))
    + _pair("Lens", "Lens", (255, 20, 147))
    + _pair("Glnd_Lacrimal", "Lacrimal gland", (127, 255, 212))
    + _pair("Cochlea", "Cochlea", (255, 99, 71))
    + _pair("Parotid", "Parotid gland", (30, 144, 255), paper=True)
    + _pair("Glnd_Submand", "Submandibular gland", (186, 85, 211), paper=True)
    + _mid("Bone_Mandible", "Mandible", (245, 245, 220), paper=True)
    + _mid("Cavity_Oral", "Oral cavity", (255, 182, 193))
    + _mid("Lips", "Lips", (220, 20, 60))
    + _mid("Musc_Constrict_S", "Pharyngeal constrictor muscle, superior", (210, 105, 30))
    + _mid("Musc_Constrict_M", "Pharyngeal constrictor muscle, middle", (205, 133, 63))
    + _mid("Musc_Constrict_I", "Pharyngeal constrictor muscle, inferior", (160, 82, 45))
    + _mid("Cricopharyngeus", "Cricopharyngeal inlet", (244, 164, 96))
    + _mid("Esophagus_S", "Cervical oesophagus", (139, 69, 19))
    + _mid("Larynx_SG", "Supraglottic larynx", (0, 255, 255))
    + _mid("Glottis", "Glottic larynx", (0, 139, 139))
    + _mid("Glnd_Thyroid", "Thyroid gland", (173, 255, 47))
    + _pair("BrachialPlex", "Brachial plexus", (255, 215, 0))
    + _pair("A_Carotid", "Carotid artery", (255, 0, 0))
)

BY_NAME: dict[str, Oar] = {oar.name: oar for oar in OARS}
PAPER_EVALUATED: tuple[str, ...] = tuple(oar.name for oar in OARS if oar.paper_evaluated)

# Core synonyms (laterality removed, lower case, no separators) -> TG-263 base name (without _L/_R).
_CORE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "Brain": ("brain", "cerebrum", "wholebrain"),
    "Lobe_Temporal": ("lobetemporal", "temporallobe", "temporal", "templobe"),
    "Brainstem": ("brainstem", "brainsteam", "stem"),
    "SpinalCord": ("spinalcord", "cord", "spinalcordprv0", "sc", "myelon"),
    "Pituitary": ("pituitary", "pituitarygland", "glndpituitary", "hypophysis"),
    "OpticChiasm": ("opticchiasm", "chiasm", "chiasma"),
    "OpticNrv": ("opticnrv", "opticnerve", "on", "nerveoptic", "nrvoptic"),
    "Eye": ("eye", "globe", "orbit", "eyeball", "bulbus"),
    "Lens": ("lens", "lense"),
    "Glnd_Lacrimal": ("glndlacrimal", "lacrimal", "lacrimalgland"),
    "Cochlea": ("cochlea", "cochlear"),
    "Parotid": ("parotid", "parotidgland", "glndparotid"),
    "Glnd_Submand": ("glndsubmand", "submandibular", "submandibulargland", "submand", "smg"),
    "Bone_Mandible": ("bonemandible", "mandible", "mandibula", "jaw"),
    "Cavity_Oral": ("cavityoral", "oralcavity", "oral", "mouth"),
    "Lips": ("lips", "lip"),
    "Musc_Constrict_S": ("muscconstricts", "pcmsup", "pcms", "constrictorsuperior", "superiorconstrictor"),
    "Musc_Constrict_M": ("muscconstrictm", "pcmmed", "pcmm", "constrictormiddle", "middleconstrictor"),
    "Musc_Constrict_I": ("muscconstricti", "pcminf", "pcmi", "constrictorinferior", "inferiorconstrictor"),
    "Cricopharyngeus": ("cricopharyngeus", "cricopharyngealinlet", "cricopharynx", "cricopharyngeal"),
    "Esophagus_S": ("esophaguss", "esophagus", "oesophagus", "esophaguscervical", "cervicalesophagus"),
    # OpenKBP's "Larynx" is the whole larynx; the catalogue's nearest entry is the supraglottic larynx.
    "Larynx_SG": ("larynxsg", "supraglotticlarynx", "supraglottis", "larynx"),
    "Glottis": ("glottis", "glotticlarynx", "larynxg", "larynxglottic"),
    "Glnd_Thyroid": ("glndthyroid", "thyroid", "thyroidgland"),
    "BrachialPlex": ("brachialplex", "brachialplexus", "bp", "plexusbrachialis"),
    "A_Carotid": ("acarotid", "carotid", "carotidartery", "arterycarotid", "carotids"),
}
_LEFT = {"l", "lt", "left", "lft", "links", "sin", "sinister"}
_RIGHT = {"r", "rt", "right", "rgt", "rechts", "dex", "dexter"}

_LOOKUP: dict[str, str] = {core: base for base, cores in _CORE_SYNONYMS.items() for core in cores}


def _tokens(name: str) -> list[str]:
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name.strip())  # LeftParotid -> Left Parotid
    return [t for t in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if t]


def resolve(name: str) -> Oar:
    """Map a clinical structure name onto a catalogue OAR, or raise ``UnknownStructureError``."""
    if name in BY_NAME:
        return BY_NAME[name]
    tokens = _tokens(name)
    side: str | None = None
    if len(tokens) > 1 and tokens[0] in _LEFT | _RIGHT:
        side = "L" if tokens[0] in _LEFT else "R"
        tokens = tokens[1:]
    elif len(tokens) > 1 and tokens[-1] in _LEFT | _RIGHT:
        side = "L" if tokens[-1] in _LEFT else "R"
        tokens = tokens[:-1]
    core = "".join(tokens)
    base = _LOOKUP.get(core)
    if base is None and side is None and len(core) > 1 and core[-1] in "lr":
        # glued suffix, e.g. "ParotidL", "OpticNerveR"
        base, side = _LOOKUP.get(core[:-1]), core[-1].upper()
    if base is None:
        raise UnknownStructureError(name)
    candidate = f"{base}_{side}" if side else base
    if candidate in BY_NAME:
        return BY_NAME[candidate]
    raise UnknownStructureError(name)  # e.g. a side on a midline OAR, or a paired OAR without a side


def try_resolve(name: str) -> Oar | None:
    try:
        return resolve(name)
    except UnknownStructureError:
        return None

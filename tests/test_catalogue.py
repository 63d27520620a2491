"""The OAR catalogue: 36 TG-263 names, fixed colours, laterality, the paper's 8, and clinical aliases."""

from __future__ import annotations

import pytest

from anatomy.catalogue import BY_NAME, OARS, PAPER_EVALUATED, Laterality, UnknownStructureError, resolve, try_resolve

EXPECTED = """Brain Brainstem SpinalCord Pituitary OpticChiasm OpticNrv_L OpticNrv_R Eye_L Eye_R Lens_L Lens_R
Glnd_Lacrimal_L Glnd_Lacrimal_R Cochlea_L Cochlea_R Parotid_L Parotid_R Glnd_Submand_L Glnd_Submand_R
Bone_Mandible Cavity_Oral Lips Musc_Constrict_S Musc_Constrict_M Musc_Constrict_I Cricopharyngeus Esophagus_S
Larynx_SG Glottis Glnd_Thyroid BrachialPlex_L BrachialPlex_R A_Carotid_L A_Carotid_R Lobe_Temporal_L
Lobe_Temporal_R""".split()


def test_the_36_oars_in_tg263_spelling():
    assert len(OARS) == 36 and sorted(BY_NAME) == sorted(EXPECTED)
    for oar in OARS:
        assert len(oar.name) <= 16  # TG-263 names fit in 16 characters
        assert oar.interpreted_type == "ORGAN"


def test_colours_are_fixed_and_distinct():
    assert BY_NAME["Parotid_L"].color == (30, 144, 255)
    assert BY_NAME["SpinalCord"].color == (255, 255, 0)
    assert len({oar.color for oar in OARS}) == 36
    for oar in OARS:
        assert all(0 <= c <= 255 for c in oar.color)


def test_laterality_and_mirrors():
    for oar in OARS:
        if oar.name.endswith("_L"):
            assert oar.laterality is Laterality.LEFT and BY_NAME[oar.mirror].laterality is Laterality.RIGHT
        elif oar.name.endswith("_R"):
            assert oar.laterality is Laterality.RIGHT and BY_NAME[oar.mirror].mirror == oar.name
        else:
            assert oar.laterality is Laterality.MIDLINE and oar.mirror is None


def test_the_papers_eight():
    assert sorted(PAPER_EVALUATED) == sorted(
        [
            "Bone_Mandible",
            "OpticNrv_L",
            "OpticNrv_R",
            "Parotid_L",
            "Parotid_R",
            "SpinalCord",
            "Glnd_Submand_L",
            "Glnd_Submand_R",
        ]
    )


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("LeftParotid", "Parotid_L"),
        ("RightParotid", "Parotid_R"),
        ("Parotid Lt", "Parotid_L"),
        ("L_Parotid", "Parotid_L"),
        ("Parotid-Lt", "Parotid_L"),
        ("parotid_r", "Parotid_R"),
        ("ParotidR", "Parotid_R"),
        ("Mandible", "Bone_Mandible"),
        ("Spinal Cord", "SpinalCord"),
        ("Spinal-Cord", "SpinalCord"),
        ("Optic-Nerve-Rt", "OpticNrv_R"),
        ("Optic Nerve L", "OpticNrv_L"),
        ("Orbit-Lt", "Eye_L"),
        ("Lens-Rt", "Lens_R"),
        ("Lacrimal-Lt", "Glnd_Lacrimal_L"),
        ("Cochlea-Rt", "Cochlea_R"),
        ("Submandibular-Lt", "Glnd_Submand_L"),
        ("Brainstem", "Brainstem"),
        ("BrainStem", "Brainstem"),
        ("Esophagus", "Esophagus_S"),
        ("Larynx", "Larynx_SG"),
        ("Thyroid", "Glnd_Thyroid"),
        ("Brachial Plexus Left", "BrachialPlex_L"),
        ("Carotid_Rt", "A_Carotid_R"),
        ("Temporal Lobe R", "Lobe_Temporal_R"),
        ("PCM_Sup", "Musc_Constrict_S"),
        ("Chiasm", "OpticChiasm"),
        ("Glnd_Submand_R", "Glnd_Submand_R"),
    ],
)
def test_clinical_aliases(alias, name):
    assert resolve(alias).name == name


@pytest.mark.parametrize("name", ["Lung-Lt", "Spinal-Canal", "PTV70", "Brain_L", "Parotid", "External"])
def test_names_outside_the_catalogue_are_refused(name):
    with pytest.raises(UnknownStructureError) as err:
        resolve(name)
    assert err.value.code == "UNKNOWN_STRUCTURE"
    assert try_resolve(name) is None

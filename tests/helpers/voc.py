"""A one-image Pascal VOC folder (Annotations/, JPEGImages/, ImageSets/Main/train.txt), for the
reader tests."""

from __future__ import annotations


def write_voc(root, encode_image, objects_xml: str, name: str = "0001"):
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "JPEGImages").mkdir(exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (root / "JPEGImages" / f"{name}.png").write_bytes(encode_image(20, 40))
    (root / "Annotations" / f"{name}.xml").write_text(
        f"<annotation><filename>{name}.png</filename><size><width>40</width><height>20</height>"
        f"<depth>3</depth></size>{objects_xml}</annotation>"
    )
    (root / "ImageSets" / "Main" / "train.txt").write_text(f"{name}\n")


VOC_OBJECTS = (
    "<object><name>cat</name><difficult>1</difficult><bndbox><xmin>5</xmin><ymin>2</ymin><xmax>15</xmax>"
    "<ymax>12</ymax></bndbox></object>"
    "<object><name>dog</name><bndbox><xmin>20</xmin><ymin>0</ymin><xmax>40</xmax><ymax>20</ymax></bndbox>"
    "<weight>3</weight></object>"
)

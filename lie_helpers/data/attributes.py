"""CelebA's format: its 40 binary attributes (in the order of list_attr_celeba.txt) and its files.

Real and generated data share the layout of torchvision's ``CelebA`` under ``<root>/celeba/``;
generated data alone carries ``ground_truth.json``.
"""

ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings",
    "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)
assert len(ATTRIBUTES) == 40
INDEX = {a: i for i, a in enumerate(ATTRIBUTES)}   # column of each attribute
HAIR_COLOURS = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")   # exclusive in generated data; meant so in CelebA

BASE_FOLDER = "celeba"
IMAGE_FOLDER = "img_align_celeba"
GROUND_TRUTH = "ground_truth.json"
# (file, header line index for torchvision's parser, number of value columns)
TEXT_FILES = (
    ("list_eval_partition.txt", None, 1),
    ("identity_CelebA.txt", None, 1),
    ("list_bbox_celeba.txt", 1, 4),
    ("list_landmarks_align_celeba.txt", 1, 10),
    ("list_attr_celeba.txt", 1, 40),
)

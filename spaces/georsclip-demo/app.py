"""GeoRSCLIP demo Space: zero-shot classification, text localization and search (modeling_georsclip.demo).

The model comes from README.md's front matter (`georsclip_model`: a Hub id or a folder relative to this one);
the Space variable GEORSCLIP_MODEL overrides it. Run locally with `python app.py`.
"""

from modeling_georsclip.demo import launch, space_app

demo = space_app(__file__)

if __name__ == "__main__":
    launch(demo)

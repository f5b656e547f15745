"""Data curation before preprocessing: the paper's image and video filters as one resumable tool.

rules (the rules file) -> image_rules / ocr / aesthetics (per image) -> scenes / motion / video
(per video: clips, then per clip) -> dedup (across rows) -> worker / runner (shards, resume) -> report.
"""

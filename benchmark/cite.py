"""Citations for the suite, the paper it follows, and every rule in a table."""
from models import RULES

ENTRIES = {
    "biobench": {"type": "software", "author": "{biobench developers}",
                 "title": "biobench: a benchmark suite for biologically plausible learning rules on fully "
                          "connected, convolutional and locally connected networks",
                 "year": "2026", "version": "0.1.0", "note": "See CITATION.cff"},
    "bartunov2018": {"type": "inproceedings",
                     "author": "Bartunov, Sergey and Santoro, Adam and Richards, Blake A. and Marris, Luke and "
                               "Hinton, Geoffrey E. and Lillicrap, Timothy",
                     "title": "Assessing the Scalability of Biologically-Motivated Deep Learning Algorithms "
                              "and Architectures",
                     "booktitle": "Advances in Neural Information Processing Systems 31 (NeurIPS)",
                     "year": "2018", "eprint": "1807.04587", "archiveprefix": "arXiv"},
    "rumelhart1986": {"type": "article", "author": "Rumelhart, David E. and Hinton, Geoffrey E. and Williams, Ronald J.",
                      "title": "Learning representations by back-propagating errors", "journal": "Nature",
                      "volume": "323", "pages": "533--536", "year": "1986", "doi": "10.1038/323533a0"},
    "lillicrap2016": {"type": "article",
                      "author": "Lillicrap, Timothy P. and Cownden, Daniel and Tweed, Douglas B. and Akerman, Colin J.",
                      "title": "Random synaptic feedback weights support error backpropagation for deep learning",
                      "journal": "Nature Communications", "volume": "7", "pages": "13276", "year": "2016",
                      "doi": "10.1038/ncomms13276"},
    "nokland2016": {"type": "inproceedings", "author": "N{\\o}kland, Arild",
                    "title": "Direct Feedback Alignment Provides Learning in Deep Neural Networks",
                    "booktitle": "Advances in Neural Information Processing Systems 29 (NIPS)", "year": "2016",
                    "eprint": "1609.01596", "archiveprefix": "arXiv"},
    "liao2016": {"type": "inproceedings", "author": "Liao, Qianli and Leibo, Joel Z. and Poggio, Tomaso",
                 "title": "How Important Is Weight Symmetry in Backpropagation?",
                 "booktitle": "Proceedings of the Thirtieth AAAI Conference on Artificial Intelligence",
                 "year": "2016", "eprint": "1510.05067", "archiveprefix": "arXiv"},
    "xiao2018": {"type": "misc", "author": "Xiao, Will and Chen, Honglin and Liao, Qianli and Poggio, Tomaso",
                 "title": "Biologically-plausible learning algorithms can scale to large datasets",
                 "year": "2018", "eprint": "1811.03567", "archiveprefix": "arXiv"},
    "moskovitz2018": {"type": "misc", "author": "Moskovitz, Theodore H. and Litwin-Kumar, Ashok and Abbott, L. F.",
                      "title": "Feedback alignment in deep convolutional networks", "year": "2018",
                      "eprint": "1812.06488", "archiveprefix": "arXiv"},
    "kolen1994": {"type": "inproceedings", "author": "Kolen, John F. and Pollack, Jordan B.",
                  "title": "Backpropagation without weight transport",
                  "booktitle": "Proceedings of the 1994 IEEE International Conference on Neural Networks (ICNN'94)",
                  "volume": "3", "pages": "1375--1380", "year": "1994", "doi": "10.1109/ICNN.1994.374486"},
    "akrout2019": {"type": "inproceedings",
                   "author": "Akrout, Mohamed and Wilson, Collin and Humphreys, Peter C. and Lillicrap, Timothy and "
                             "Tweed, Douglas",
                   "title": "Deep Learning without Weight Transport",
                   "booktitle": "Advances in Neural Information Processing Systems 32 (NeurIPS)", "year": "2019",
                   "eprint": "1904.05391", "archiveprefix": "arXiv"},
    "lee2015": {"type": "inproceedings",
                "author": "Lee, Dong-Hyun and Zhang, Saizheng and Fischer, Asja and Bengio, Yoshua",
                "title": "Difference Target Propagation",
                "booktitle": "Machine Learning and Knowledge Discovery in Databases (ECML PKDD 2015)",
                "series": "Lecture Notes in Computer Science", "volume": "9284", "pages": "498--515",
                "year": "2015", "doi": "10.1007/978-3-319-23528-8_31"},
    "meulemans2020": {"type": "inproceedings",
                      "author": "Meulemans, Alexander and Carzaniga, Francesco S. and Suykens, Johan A. K. and "
                                "Sacramento, Jo{\\~a}o and Grewe, Benjamin F.",
                      "title": "A Theoretical Framework for Target Propagation",
                      "booktitle": "Advances in Neural Information Processing Systems 33 (NeurIPS)", "year": "2020",
                      "eprint": "2006.14331", "archiveprefix": "arXiv"},
    "ernoult2022": {"type": "inproceedings",
                    "author": "Ernoult, Maxence and Normandin, Fabrice and Moudgil, Abhinav and Spinney, Sean and "
                              "Belilovsky, Eugene and Rish, Irina and Richards, Blake and Bengio, Yoshua",
                    "title": "Towards Scaling Difference Target Propagation by Learning Backprop Targets",
                    "booktitle": "Proceedings of the 39th International Conference on Machine Learning (ICML)",
                    "series": "Proceedings of Machine Learning Research", "volume": "162", "year": "2022",
                    "eprint": "2201.13415", "archiveprefix": "arXiv"},
}


def entry(key):
    """A citation by key: the built-in ones, or one a plug-in rule brings in
    its ``citations`` dict (``{key: {"type": ..., "author": ..., ...}}``)."""
    if key in ENTRIES:
        return ENTRIES[key]
    for name in RULES.registered():
        brought = getattr(RULES.get(name), "citations", {})
        if key in brought:
            return brought[key]
    raise ValueError(f"no citation entry {key!r} (a plug-in rule names it but does not bring it)")


def keys_for_rules(rules):
    keys = ["biobench", "bartunov2018"]
    for name in rules:
        for key in RULES.get(name).citation_keys:
            if key not in keys:
                keys.append(key)
    return keys


def bibtex(keys):
    blocks = []
    for key in keys:
        fields = dict(entry(key))
        kind = fields.pop("type")
        body = ",\n".join(f"  {name} = {{{value}}}" for name, value in fields.items())
        blocks.append(f"@{kind}{{{key},\n{body}\n}}")
    return "\n\n".join(blocks) + "\n"


def plain_text(keys):
    lines = []
    for key in keys:
        e = entry(key)
        venue = e.get("journal") or e.get("booktitle") or (f"arXiv:{e['eprint']}" if "eprint" in e else e.get("note", ""))
        authors = e["author"].replace("{", "").replace("}", "").replace("\\o", "ø").replace("\\~a", "ã").replace(" and ", "; ")
        lines.append(f"[{key}] {authors} ({e['year']}). {e['title']}." + (f" {venue}." if venue else ""))
    return "\n".join(lines) + "\n"

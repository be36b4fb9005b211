"""Each family's real tokenizer class, learned offline from a small corpus (prompt words, templates, digits, class
names), deterministic, so that `make_offline_model` writes directories whose tokenizers load and behave like the real
ones without the Hub."""

from __future__ import annotations

import string
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..data import TEMPLATES, build_prompts

# Words of CoOp-style prompts and of common image descriptions; `make_offline_model` adds the class-name words.
_PROMPT_WORDS = """
a an the of in on at by with without and or for to from this that these those is are its it his her their one two
three photo photos picture image images drawing painting sketch rendering cartoon sculpture tattoo origami toy plushie
close up cropped bright dark blurry clean dirty good bad large small big little low high resolution quality jpeg
pixelated black white grey gray red green blue yellow orange purple pink brown type kind sort class category pet
flower food aircraft plane car texture satellite centered view aerial person doing clothing clothes garment shoe
animal bird dog cat object thing item handwritten digit number letter scene place style art video game embroidered
hard see rendition weird cool nice my our your someone something
"""


def _corpus(class_names: Sequence[str], templates: Iterable[str] = TEMPLATES.values()) -> list[str]:
    """The texts the offline tokenizers learn their vocabulary from: prompt words, templates, digits, class prompts."""
    templates = [template.replace("{}", " ") for template in templates]
    return [_PROMPT_WORDS, *templates, " ".join("0123456789"), *build_prompts(class_names, "{}")]


def _words(tokenizer, texts: Sequence[str]) -> list[str]:
    """The distinct words of `texts` as the normalizer and pre-tokenizer of `tokenizer` (a `TokenizersBackend`) see
    them, sorted."""
    backend = tokenizer.backend_tokenizer
    normalize = backend.normalizer.normalize_str if backend.normalizer else str
    return sorted({word for text in texts for word, _ in backend.pre_tokenizer.pre_tokenize_str(normalize(text))})


def _sentencepiece(texts: Sequence[str], **special_ids: int) -> bytes:
    """A SentencePiece unigram model learned from `texts` (every character kept), with special pieces at
    `special_ids` (e.g. `eos_id=1`; -1 leaves one out). SentencePiece training is deterministic.

    Returns:
        The serialized model (the content of an `spiece.model` file).
    """
    import io

    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=100_000,
        hard_vocab_limit=False,
        character_coverage=1.0,
        minloglevel=2,
        **special_ids,
    )
    return model.getvalue()


def _merges(words: Sequence[str]) -> list[tuple[str, str]]:
    """BPE merges that build each word of `words` (lists of symbols) left to right, in order, without repeats.
    (tokenizers' BPE trainer breaks ties between equally frequent pairs differently from run to run.)"""
    merges = [("".join(word[:end]), word[end]) for word in words for end in range(1, len(word))]
    return list(dict.fromkeys(merges))


def _clip_tokenizer(texts: Sequence[str], vocab_size: int | None):
    """CLIP's byte-level BPE with `</w>` word ends: the 256 bytes alone and at word end, then merges that build each
    word of `texts`; `<|startoftext|>` / `<|endoftext|>` take the last two ids (49406 / 49407 at the real size)."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = _merges([[*word[:-1], word[-1] + "</w>"] for word in _words(CLIPTokenizer(), texts)])
    tokens = list(dict.fromkeys([*alphabet, *(a + "</w>" for a in alphabet), *("".join(pair) for pair in merges)]))
    vocab_size = vocab_size or len(tokens) + 2
    if len(tokens) + 2 > vocab_size:
        raise ValueError(f"{len(tokens)} BPE tokens do not fit a vocabulary of {vocab_size}.")
    vocab = {token: i for i, token in enumerate(tokens)}
    vocab.update({"<|startoftext|>": vocab_size - 2, "<|endoftext|>": vocab_size - 1})
    return CLIPTokenizer(vocab=vocab, merges=merges)


def _xlm_roberta_tokenizer(texts: Sequence[str], vocab_size: int | None):
    """XLM-R's SentencePiece unigram (also MetaCLIP 2's XLM-V), cased: `<s>` 0, `<pad>` 1, `</s>` 2, `<unk>` 3,
    `<mask>` last."""
    import sentencepiece
    from transformers import XLMRobertaTokenizer

    model = sentencepiece.SentencePieceProcessor(model_proto=_sentencepiece(texts, unk_id=0, bos_id=-1, eos_id=-1))
    pieces = [(model.id_to_piece(i), model.get_score(i)) for i in range(1, model.get_piece_size())]
    specials = [(token, 0.0) for token in ("<s>", "<pad>", "</s>", "<unk>")]
    return XLMRobertaTokenizer(vocab=[*specials, *pieces, ("<mask>", 0.0)])


def _bert_tokenizer(texts: Sequence[str], vocab_size: int | None):
    """BERT's lowercasing WordPiece (ChineseCLIP), special tokens at the ids of `bert-base-chinese`: `[PAD]` 0,
    `[UNK]` 100, `[CLS]` 101, `[SEP]` 102, `[MASK]` 103; every word of `texts` is one piece."""
    from transformers import BertTokenizer

    specials = ["[PAD]", *(f"[unused{i}]" for i in range(1, 100)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = _words(BertTokenizer(), texts)
    return BertTokenizer(vocab={token: i for i, token in enumerate([*specials, *words])})


def _siglip_tokenizer(texts: Sequence[str], vocab_size: int | None):
    """SigLIP's SentencePiece model (`spiece.model`): `<pad>` 0, `</s>` 1 (end and padding), `<unk>` 2, no
    beginning token; trained on lowercase text without punctuation, as `SiglipTokenizer` canonicalizes it."""
    from transformers import SiglipTokenizer

    canonical = [" ".join(text.lower().translate(str.maketrans("", "", string.punctuation)).split()) for text in texts]
    with tempfile.TemporaryDirectory() as tmp:
        model_file = Path(tmp, "spiece.model")
        model_file.write_bytes(_sentencepiece(canonical, pad_id=0, eos_id=1, unk_id=2, bos_id=-1))
        return SiglipTokenizer(vocab_file=str(model_file))


def _gemma_tokenizer(texts: Sequence[str], vocab_size: int | None):
    """Gemma's BPE with byte fallback, as SigLIP 2 ships it: `<pad>` 0, `<eos>` 1, `<bos>` 2, `<unk>` 3, `<mask>` 4,
    the 256 byte tokens, then pieces of lowercase words (`▁` marks a leading space); no `<bos>`, a closing `<eos>`,
    padding on the right. Saved as `Siglip2Tokenizer`, which lowercases like the text SigLIP 2 was trained on: the Hub
    files name `GemmaTokenizer`, which transformers < 5.20 loads as it is, without lowercasing."""
    from tokenizers import pre_tokenizers
    from transformers import GemmaTokenizer, Siglip2Tokenizer

    learner = GemmaTokenizer()
    # Gemma reads a whole text as one pre-token; pieces are learned within words, as in the real one.
    learner.backend_tokenizer.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    words = _words(learner, [text.lower() for text in texts])
    merges = _merges([list(word) for word in words])
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", *(f"<0x{byte:02X}>" for byte in range(256))]
    tokens = dict.fromkeys([*specials, *sorted({char for word in words for char in word}), *map("".join, merges)])
    return Siglip2Tokenizer(
        vocab={token: i for i, token in enumerate(tokens)},
        merges=merges,
        add_bos_token=False,
        add_eos_token=True,
        padding_side="right",
    )

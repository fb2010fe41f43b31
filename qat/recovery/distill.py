"""Block-wise distillation: every transformer block of the student is supervised by the same block of a teacher."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from qat.base.errors import QatError
from qat.quant.structure import transformer_blocks

COSINE_LOSS, MSE_LOSS, KL_LOSS = "cosine", "mse", "kl"   # the output term for embeddings, scores, class logits


class BlockReached(Exception):
    """Ends a forward pass at the last block a loss reads (record_blocks' `last`): the blocks after it would be
    computed for nothing."""


@contextmanager
def record_blocks(model: nn.Module, last: int | None = None) -> Iterator[list[torch.Tensor]]:
    """Collect each block's output hidden states during the forward passes run inside the context; with `last`,
    a forward pass stops (BlockReached) once block `last` has run, and the context ends it quietly."""
    outputs: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple, output: torch.Tensor | tuple) -> None:
        outputs.append(output[0] if isinstance(output, tuple) else output)
        if last is not None and len(outputs) > last:
            raise BlockReached

    handles = [block.register_forward_hook(hook) for block in transformer_blocks(model)]
    try:
        yield outputs
    except BlockReached:
        pass
    finally:
        for handle in handles:
            handle.remove()


COSINE_SCALE = 20.0   # sentence-transformers' CoSENTLoss default, for cosine similarities in [-1, 1]
LOGIT_SCALE = 1.0     # a score head's logits are log-odds already: RankNet's pairwise logistic loss


@dataclass
class DistillLoss:
    total: torch.Tensor
    blocks: list[torch.Tensor]
    output: torch.Tensor
    task: torch.Tensor | None = None         # the ranking loss on labelled pairs, before train.task_weight
    similarity: torch.Tensor | None = None   # the in-batch similarity loss, before train.similarity_weight
    first_block: int = 0                     # the block blocks[0] belongs to (sequential training: the one trained)


def ranking_loss(similarity: torch.Tensor, labels: torch.Tensor, kind: str = COSINE_LOSS) -> torch.Tensor:
    """CoSENT (Su 2022; sentence-transformers' CoSENTLoss): log(1 + sum over pairs i, j with label_i < label_j of
    exp(scale * (sim_i - sim_j))). It asks only that similarities be ordered as the labels are, so the labels' scale
    does not matter (STS 0-5, relevance 0/1) and it serves a rank measure such as Spearman. The scale is set by
    the similarity's units (`kind`, as in output_loss): 20 for the cosines of embeddings, 1 for a head's logits."""
    scale = COSINE_SCALE if kind == COSINE_LOSS else LOGIT_SCALE
    difference = scale * (similarity.float()[:, None] - similarity.float()[None, :])
    ordered = labels[:, None] < labels[None, :]
    return torch.logsumexp(torch.cat([difference.new_zeros(1), difference[ordered]]), dim=0)


def normalized_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per sample, MSE over its real (unpadded) tokens divided by the teacher's mean square; then the mean over
    samples. Normalised so blocks are comparable; per sample so that a batch split across processes averages
    to exactly the whole batch's loss."""
    weights = mask.unsqueeze(-1).float()
    count = weights.sum(dim=(1, 2)) * student.shape[-1]
    mse = ((student.float() - teacher.float()) ** 2 * weights).sum(dim=(1, 2)) / count
    power = (teacher.float() ** 2 * weights).sum(dim=(1, 2)) / count
    return (mse / power.clamp(min=1e-12)).mean()


def output_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str) -> torch.Tensor:
    """Embeddings: 1 - cosine; a score head's independent scores: MSE; class logits: KL(teacher || student)."""
    student, teacher = student.float(), teacher.detach().float()
    if kind == COSINE_LOSS:
        return 1.0 - nn.functional.cosine_similarity(student, teacher, dim=-1).mean()
    if kind == MSE_LOSS:
        return nn.functional.mse_loss(student, teacher)
    return nn.functional.kl_div(student.log_softmax(-1), teacher.log_softmax(-1), log_target=True, reduction="batchmean")


def similarity_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Relational distillation of embeddings (Park et al. 2019; Tung and Mori 2019, similarity-preserving): the
    MSE between the student's and the teacher's cosine similarities of every pair of texts in the batch, divided by
    the variance of the teacher's. The per-text cosine term leaves a shift shared by all embeddings free, and such
    a shift moves every similarity score a little: this term holds the similarity distribution that the held-out
    and guard EMD and every STS or retrieval score read."""
    student = nn.functional.normalize(student.float(), dim=-1)
    teacher = nn.functional.normalize(teacher.detach().float(), dim=-1)
    pairs = ~torch.eye(len(teacher), dtype=torch.bool, device=teacher.device)
    student_similarity, teacher_similarity = (student @ student.T)[pairs], (teacher @ teacher.T)[pairs]
    if teacher_similarity.numel() < 2:
        return student_similarity.sum() * 0.0   # one text: no pair to compare
    variance = teacher_similarity.var().clamp(min=1e-12)
    return ((student_similarity - teacher_similarity) ** 2).mean() / variance


def distillation_loss(student_blocks: list[torch.Tensor], teacher_blocks: list[torch.Tensor],
                      student_outputs: torch.Tensor, teacher_outputs: torch.Tensor, mask: torch.Tensor,
                      block_weight: float, output_weight: float, output_kind: str = COSINE_LOSS,
                      similarity_weight: float = 0.0) -> DistillLoss:
    """sum_b block_weight * nMSE(block b) + output_weight * the output loss (see output_loss), plus for embeddings
    similarity_weight * the in-batch similarity loss (see similarity_loss)."""
    if len(student_blocks) != len(teacher_blocks):
        raise QatError(f"student has {len(student_blocks)} blocks, teacher {len(teacher_blocks)}; expected the same")
    blocks = [normalized_mse(s, t.detach(), mask) for s, t in zip(student_blocks, teacher_blocks)]
    output = output_loss(student_outputs, teacher_outputs, output_kind)
    total = block_weight * torch.stack(blocks).sum() + output_weight * output
    if similarity_weight == 0 or output_kind != COSINE_LOSS:
        return DistillLoss(total, blocks, output)
    similarity = similarity_loss(student_outputs, teacher_outputs)
    return DistillLoss(total + similarity_weight * similarity, blocks, output, similarity=similarity)

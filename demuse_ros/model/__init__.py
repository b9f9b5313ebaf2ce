"""The DeMUSE policy model (paper ``000``, §3 and appendices A–B).

* :mod:`.config`: presets (``xl``, ``cpu``, ``tiny``), model/diffusion configs and the token layout;
* :mod:`.embed`, :mod:`.blocks`, :mod:`.dit`: the denoiser (heterogeneous embedding, AdaMN,
  attention, FFN / shared-expert sparse MoE, joint prediction head);
* :mod:`.diffusion`: DDPM schedule, the joint ε-prediction loss, DDIM and DUST sampling;
* :mod:`.autoencoder`: the image autoencoder (built-in conv AE or a diffusers ``AutoencoderKL``);
* :mod:`.data`, :mod:`.train`, :mod:`.checkpoint`, :mod:`.policy`: data, training, checkpoints
  and the observation → action-chunk wrapper;
* :mod:`.flops`: parameter and FLOP counters; :mod:`.export`: one step for torch.export / ONNX;
* :mod:`.commands`: the ``demuse train``, ``train-autoencoder`` and ``bench model`` handlers.

Importing this package does not import torch; :mod:`.config` and :mod:`.flops` work without it.
"""

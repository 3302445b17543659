"""Digital staining: confocal (FCM + RCM) to pseudo-H&E (Combalia et al., MIDL 2019) and
stain-to-stain CycleGANs (de Bel et al., MIDL 2019); spec: ``shared/specs/digital-staining.md``.

Qt-free method modules (the panels and CLI verbs build on these; nothing here imports Qt):

* ``checks``: :class:`StainInputError` and the input checks shared by every entry point.
* ``confocal``: the Gareau renderer ``gareau(fcm, rcm, h, e)``, its least-squares inverse
  ``gareau_inverse``, ``robust_normalise`` and the whole path ``confocal_to_rgb(image,
  ConfocalParams, despeckle=None)``.
* ``deconvolution``: Ruifrok-Johnston ``deconvolve``/``reconvolve`` without clamping, the
  recolouring ``recolour``/``recolour_inverse``, and the §4 test data (``fcm_sim``, ``rcm_sim``,
  ``transfer_data``, ``despeckle_data``) from scikit-image's IHC image.
* ``despeckle``: ``speckle``, the ``Despeckler`` net, ``train_despeckler`` (a step of the shared
  loop) and ``despeckle(image, model, median=True)``.
* ``cyclegan``: ``ResUNetGenerator``, ``ResNetGenerator``, ``PatchDiscriminator``,
  ``CycleGANStep``, ``train_cyclegan`` and ``translate``; ``sampling``: tissue masks and the
  on-the-fly ``PatchSampler``.
* ``normalise``: Macenko and Reinhard through torchstain (``fit_normaliser``, ``normalise``).
* ``metrics``: SSIM, Wasserstein colour distance, PSNR, class-weighted Dice; ``evaluation``: the
  numbers of the spec's checks 4 and 6.
* ``zoo``: ``list_stain_models``/``load_stain_model`` (``resources/stain_models``, sha256-checked);
  ``recipes``: ``train_stain_recipe(name_or_path, out_dir, progress, should_stop)``; ``cards``.

Shell: ``cli`` (``medloop stain confocal | despeckle | transfer | normalize | train``) and
``widget`` (the *Stain transfer*, *Confocal → H&E* and *Normalise stain* panels) and
*Train stain transfer* (``TrainStainPanel``; its versions live in ``user_models``).
"""

from medloop.app.plugin import Plugin, Widget

PLUGIN = Plugin(
    name="staining",
    title="Digital staining: confocal to pseudo-H&E and stain-to-stain CycleGANs",
    cli="medloop.plugins.staining.cli:add_verbs",
    widgets=(
        Widget("Stain transfer", "medloop.plugins.staining.widget:StainTransferPanel",
               "Translate an RGB image or a whole slide to another stain (CycleGAN)"),
        Widget("Confocal to H&E", "medloop.plugins.staining.widget:ConfocalPanel",
               "Render a 2-channel confocal (FCM, RCM) image as pseudo-H&E"),
        Widget("Normalise stain", "medloop.plugins.staining.widget:NormalisePanel",
               "Macenko or Reinhard normalisation to a reference region you draw"),
        Widget("Train stain transfer", "medloop.plugins.staining.widget:TrainStainPanel",
               "Train a stain-transfer CycleGAN on two unpaired image sets; versions the Stain transfer panel lists"),
    ),
)

"""The old home of the random-init SD architectures: a re-export of :mod:`rlr_core.models.sd_arch`.

``python -m rlr_core.sd_arch write ARCH DIR ...`` keeps working (see that module).
"""

from .models.sd_arch import (ARCHITECTURES, build_text_encoder, build_tokenizer, build_unet, build_vae, check_arch,
                             default_image_size, main, parameter_count, scheduler_config, text_encoder_config,
                             unet_config, vae_config, write_pipeline)

__all__ = ["ARCHITECTURES", "build_text_encoder", "build_tokenizer", "build_unet", "build_vae", "check_arch",
           "default_image_size", "main", "parameter_count", "scheduler_config", "text_encoder_config", "unet_config",
           "vae_config", "write_pipeline"]

if __name__ == "__main__":
    main()
